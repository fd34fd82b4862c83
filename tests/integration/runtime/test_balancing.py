"""Channels balance round_robin over every address of a target (real servers on ephemeral
ports): with two replicas behind one `ipv4:` target, calls alternate between them, and when
one replica stops the other takes every call, with no error."""

from __future__ import annotations

import json

import pytest

from mixip.matcher.v1 import matcher_pb2, matcher_pb2_grpc
from mixip.runtime.client import KEEPALIVE_OPTIONS, service_config
from services.consent.app import MATCHER_SERVICE
from tests.support.doubles import DoubleApp, MatcherDouble


@pytest.fixture
def replicas(serve):
    doubles, servers = [], []
    for _ in range(2):
        double = MatcherDouble()
        app = DoubleApp(
            double, matcher_pb2_grpc.add_MatcherServiceServicer_to_server, MATCHER_SERVICE
        )
        servers.append(serve(app))
        doubles.append(double)
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    return doubles, servers, target


def _delete(stub, n: int) -> None:
    stub.DeleteTalentFaces(
        matcher_pb2.DeleteTalentFacesRequest(account_id="a", talent_id=f"t{n}"),
        wait_for_ready=True,
    )


def test_calls_alternate_between_the_replicas_of_one_target(replicas, channels):
    doubles, _, target = replicas
    stub = matcher_pb2_grpc.MatcherServiceStub(channels(target, MATCHER_SERVICE))
    _delete(stub, 0)  # connects: round_robin then waits for both subchannels to be ready
    for n in range(1, 11):
        _delete(stub, n)
    counts = [len(d.deletions) for d in doubles]
    assert sum(counts) == 11 and min(counts) >= 3, counts  # both, about evenly


def test_when_one_replica_stops_the_other_takes_every_call(replicas, channels):
    doubles, servers, target = replicas
    stub = matcher_pb2_grpc.MatcherServiceStub(channels(target, MATCHER_SERVICE))
    for n in range(4):
        _delete(stub, n)
    servers[0].stop(0)
    before = len(doubles[1].deletions)
    for n in range(4, 10):
        _delete(stub, n)  # no error: the dead subchannel leaves the rotation
    assert len(doubles[1].deletions) - before == 6


def test_the_service_config_asks_for_round_robin_and_channels_ping_open_calls():
    config = json.loads(service_config([MATCHER_SERVICE], 10.0))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert dict(KEEPALIVE_OPTIONS)["grpc.keepalive_time_ms"] > 0
