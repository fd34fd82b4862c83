"""Request sizes are limited per method before a request is parsed (#7), on a real gateway
process: parsing comes before authentication, so without a limit a caller with no key could
make the gateway hold and parse messages of up to 80 MiB (a 75 MiB `ListProjects` cost it
about 200 MiB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from mixip.cli.dev_mesh import start_mesh
from mixip.cli.launcher import Mesh
from mixip.gateway.v1 import gateway_pb2 as pb
from mixip.gateway.v1 import gateway_pb2_grpc
from mixip.runtime.connection import DEV_KEY_FILE
from mixip.runtime.errors import error_details
from mixip.runtime.limits import MiB
from tests.support import faces
from tests.support.gateway_calls import upload_requests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    running = start_mesh(tmp_path_factory.mktemp("limits"), web=False)
    yield running
    running.stop()


@pytest.fixture
def stub(mesh) -> Iterator[gateway_pb2_grpc.GatewayServiceStub]:
    with grpc.insecure_channel(mesh.addresses["gateway"]) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM): a request parsed and freed still shows."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def list_projects(stub, size: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListProjects(pb.ListProjectsRequest(page_token="x" * size), timeout=60)
    return refused.value


def test_an_unauthenticated_oversized_request_is_refused_unparsed(mesh, stub):
    pid = mesh.processes["gateway"].pid
    for size in (10, 900 * 1024):  # within the limit: parsed, then refused for the missing key
        assert list_projects(stub, size).code() == grpc.StatusCode.UNAUTHENTICATED
    before = peak_rss_mib(pid)

    over = list_projects(stub, 2 * MiB)  # over the method's 1 MiB: measured, never parsed
    details = error_details(over)
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "REQUEST_TOO_LARGE" and "at most 1048576" in details.message
    # over the largest limit of any method (an upload's 4 MiB chunk): gRPC refuses it before
    # Python sees it
    assert list_projects(stub, 75 * MiB).code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    grown = peak_rss_mib(pid) - before
    assert grown < 16, f"the gateway's peak memory grew {grown:.1f} MiB"  # unlimited: 200+


def test_an_authenticated_upload_in_chunks_of_the_chunk_limit_still_works(mesh, stub):
    """Upload streams take chunks up to MIXIP_GATEWAY_MAX_CHUNK_BYTES (4 MiB), beyond the
    1 MiB of every other method."""
    key = (Path(mesh.data_dir) / DEV_KEY_FILE).read_text().strip()
    noise = np.random.default_rng(7).integers(0, 256, (1800, 2400, 3), dtype=np.uint8)
    noise[: faces.astronaut().shape[0], : faces.astronaut().shape[1]] = faces.astronaut()
    data = faces.encode(noise, ".png")  # incompressible: several chunks
    assert len(data) > 3 * 4 * MiB
    reply = stub.UploadMedia(
        upload_requests(data, chunk=4 * MiB, filename="big.png"),
        metadata=(("authorization", f"Bearer {key}"),),
        timeout=120,
    )
    assert reply.media_id and len(reply.faces) >= 1
