"""Fault injection for the deployment orchestrator: SIGKILL it at one named point of a deployment, as kill -9 would.

The crash tests (tests/test_management_crash.py) run the orchestrator's CLI in
a subprocess with CADENCE_DEPLOY_FAULT=<point> (and CADENCE_DEPLOY_BWLIMIT=<KB/s>
so a copy is still running when `mid_copy` strikes), then restart it and check
that it converges. `DeployFaults.from_environment()` is the one place that
reads those variables; the CLI entry point calls it and hands the object to
`Orchestrator(cfg, faults=...)`. Everything else gets `NO_FAULTS`, which never
fires: the stages call the hooks unconditionally and stay free of test
knowledge.

Points, in the order a deployment reaches them:

    mid_copy       0.5 s after rsync started (with a bandwidth limit, the copy is under way)
    after_copy     the copy is recorded, the stage not yet advanced to verify
    mid_verify     at the start of verify, before the staged copy is renamed into place
    mid_flip       0.3 s after POST /admin/models/load was sent (in a thread), before its answer
    after_flip     the load is recorded, the stage not yet advanced to health
    mid_rollback   0.3 s after POST /admin/models/rollback was sent (in a thread)
    after_promote  state saved with the new active version, before remote cleanup

Library only.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

FAULT_ENV = "CADENCE_DEPLOY_FAULT"
BWLIMIT_ENV = "CADENCE_DEPLOY_BWLIMIT"
POINTS = ("mid_copy", "after_copy", "mid_verify", "mid_flip", "after_flip", "mid_rollback", "after_promote")
IN_FLIGHT_S = 0.3  # how long a request sent in a thread gets to reach the server before mid_flip/mid_rollback


class DeployFaults:
    """At most one kill point and an optional rsync bandwidth limit; the default instance does nothing."""

    def __init__(self, point: str | None = None, copy_bwlimit_kb: int | None = None):
        if point is not None and point not in POINTS:
            raise ValueError(f"{FAULT_ENV}={point!r} is not a fault point; one of {', '.join(POINTS)}")
        self.point = point
        self.copy_bwlimit_kb = copy_bwlimit_kb  # KB/s for rsync; a limited copy is never hard-linked

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> DeployFaults:
        """CADENCE_DEPLOY_FAULT and CADENCE_DEPLOY_BWLIMIT, or ValueError naming the variable that is wrong."""
        bwlimit = environ.get(BWLIMIT_ENV, "0").strip() or "0"
        if not bwlimit.isdigit():
            raise ValueError(f"{BWLIMIT_ENV}={bwlimit!r} is not a whole number of KB/s")
        return cls(environ.get(FAULT_ENV) or None, int(bwlimit) or None)

    def armed(self, point: str) -> bool:
        return self.point == point

    def at(self, point: str) -> None:
        """Die here when `point` is the armed one."""
        if self.point == point:
            logger.warning("fault injection: SIGKILL at %s", point)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    def copy_started(self) -> Callable[[], None] | None:
        """The rsync start hook for `mid_copy` (a timer that kills us while the copy runs), else None."""
        if not self.armed("mid_copy"):
            return None
        return lambda: threading.Timer(0.5, self.at, args=("mid_copy",)).start()

    def while_sent(self, point: str, request: Callable, *args) -> None:
        """When `point` is armed: send `request(*args)` in a thread and die while the server works on it."""
        if self.armed(point):
            threading.Thread(target=request, args=args, daemon=True).start()
            time.sleep(IN_FLIGHT_S)
            self.at(point)


NO_FAULTS = DeployFaults()
