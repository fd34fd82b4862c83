"""A service that `mixip up` started dies with it, even when `mixip up` is killed with SIGKILL.

The launcher names itself in MIXIP_SUPERVISOR_PID; the service, first thing after it starts,
asks Linux for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), and exits at once if the
parent is already gone. The service sets this itself rather than in a `preexec_fn` between fork
and exec: Python code run in the child of a multi-threaded parent (the launcher has gRPC
threads) can crash in gRPC's fork handlers before the exec. Linux only; elsewhere a service
outlives a launcher killed with SIGKILL (it still stops with it on any other signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping

SUPERVISOR_VARIABLE = "MIXIP_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_supervisor(environ: Mapping[str, str] = os.environ) -> None:
    """SIGTERM when the supervisor named in MIXIP_SUPERVISOR_PID dies; exit now if it has.
    Nothing when no supervisor is named (a service run by hand, compose, Kubernetes)."""
    named = environ.get(SUPERVISOR_VARIABLE, "")
    if not named.isdigit():
        return
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(named):  # it died before we asked: we were re-parented
        os._exit(1)
