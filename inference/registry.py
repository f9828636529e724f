"""Model versions of one server: the active one, the ones draining, the deploy history, load and rollback.

`load(path, version)` builds a standby engine from the folder (every check in
inference/loader.py, including a smoke prompt), then flips it in atomically
through the scheduler: requests already bound to the old version finish on
it, new requests go to the new one, and the old weights are freed once its
last request ends. Any failure raises ModelLoadError and leaves the active
version untouched. One load runs at a time (a second one is refused as busy).

Library only; the admin router calls these from a worker thread.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

from core.version_label import InvalidLabel, check_label
from inference.loader import ModelLoadError, load_engine

logger = logging.getLogger(__name__)


LOADER_NICE = 10
LOAD_SWITCH_INTERVAL = 0.0005  # seconds; CPython's default is 0.005


def _set_thread_nice(nice: int | None) -> int | None:
    """Set this thread's niceness (Linux applies setpriority to one thread when given its native id); returns the
    previous value, or None when it cannot be changed (not Linux, not permitted)."""
    try:
        tid = threading.get_native_id()
        previous = os.getpriority(os.PRIO_PROCESS, tid)
        if nice is not None and nice != previous:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return previous
    except (AttributeError, OSError):
        return None


class ModelRegistry:
    def __init__(self, cfg, scheduler, metrics, loader=load_engine):
        self.cfg = cfg
        # loader(path, version, cfg, require_manifest) -> (engine, report); scheduler.flip(engine) -> old engine.
        # The vLLM engine passes its own pair (inference/vllm_engine.py) and keeps every step below.
        self._loader = loader
        self.scheduler = scheduler
        self.metrics = metrics
        self._load_lock = threading.Lock()
        self.loading: dict | None = None
        self.history: list[dict] = []     # every load attempt, newest last
        self._served: list[dict] = []     # versions that were activated, newest last (rollback targets)

    @property
    def active(self):
        return self.scheduler.active

    def load(self, path: str | Path, version: str | None = None, require_manifest: bool | None = None,
             reason: str = "load") -> dict:
        """Verify and activate `path`. Returns a report; raises ModelLoadError (active version unchanged)."""
        if not self._load_lock.acquire(blocking=False):
            busy = (self.loading or {}).get("path")
            raise ModelLoadError("busy", f"another model load is in progress ({busy})")
        started = time.time()
        # Verifying a standby model runs at lower CPU priority: the cores go to the threads serving traffic first.
        previous_nice = _set_thread_nice(None)
        if previous_nice is not None and previous_nice < LOADER_NICE:
            _set_thread_nice(LOADER_NICE)
        # While this thread runs Python-heavy loading code, hand the GIL back sooner to the serving threads.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, LOAD_SWITCH_INTERVAL))
        entry = {"path": str(path), "version": version, "reason": reason, "started_at": started}
        self.loading = entry
        try:
            previous = self.active
            try:
                engine, report = self._loader(path, version, self.cfg, require_manifest)
            except ModelLoadError as exc:
                entry.update(status="rejected", code=exc.code, error=str(exc), finished_at=time.time())
                self.history.append(entry)
                self.metrics.count_load(False, exc.code)
                logger.warning("model load rejected (%s): %s; still serving %s", exc.code, exc,
                               previous.version if previous else None)
                raise
            try:  # whatever engine built it, only a valid label may reach X-Model-Version
                check_label(engine.version, "the loaded engine's version")
            except InvalidLabel as exc:
                engine.release()
                raise ModelLoadError("invalid_version", str(exc)) from None
            old = self.scheduler.flip(engine)
            entry.update(status="active", version=engine.version, global_step=engine.global_step,
                         content_id=engine.content_id, finished_at=time.time(), checks=report["checks"],
                         load_seconds=report["load_seconds"])
            self.history.append(entry)
            self._served.append({"version": engine.version, "path": engine.source_path,
                                 "global_step": engine.global_step, "require_manifest": require_manifest})
            self.metrics.count_load(True)
            logger.info("now serving %s (step %s); previous %s drains", engine.version, engine.global_step,
                        old.version if old else None)
            return {"status": "loaded", "version": engine.version, "previous_version": old.version if old else None,
                    "global_step": engine.global_step, "path": engine.source_path, "content_id": engine.content_id,
                    "checks": report["checks"], "load_seconds": report["load_seconds"],
                    # the engine's own timings and sizes (vLLM: verify_seconds, engine_start_seconds, engine_rss_mb)
                    **{k: v for k, v in report.items() if k.endswith(("_seconds", "_mb")) and k != "load_seconds"}}
        finally:
            sys.setswitchinterval(switch_interval)
            if previous_nice is not None and previous_nice < LOADER_NICE:
                _set_thread_nice(previous_nice)  # lowering back needs CAP_SYS_NICE; ignored when not permitted
            self.history = self.history[-100:]
            self.loading = None
            self._load_lock.release()

    def rollback(self, version: str | None = None) -> dict:
        """Reload the version served before the current one (or the named earlier one) through the same checks."""
        current = self.active
        candidates = [s for s in reversed(self._served[:-1]) if current is None or s["version"] != current.version]
        if version is not None:
            candidates = [s for s in candidates if s["version"] == version]
        if not candidates:
            raise ModelLoadError("no_previous", f"no earlier version{' ' + version if version else ''} to roll back to")
        target = candidates[0]
        report = self.load(target["path"], target["version"], target["require_manifest"], reason="rollback")
        # The rolled-back version replaces the one we left; drop the abandoned one from the rollback chain.
        if current is not None:
            self._served = [s for s in self._served[:-1] if s["version"] != current.version] + self._served[-1:]
        report["status"] = "rolled_back"
        return report

    def describe(self) -> dict:
        def info(e):
            return {"version": e.version, "global_step": e.global_step, "path": e.source_path,
                    "content_id": e.content_id, "loaded_at": e.loaded_at, "in_flight": e.pending}

        active = self.active
        return {"active": info(active) if active else None,
                "draining": [info(e) for e in self.scheduler.draining()],
                "loading": self.loading,
                "rollback_target": next((s for s in reversed(self._served[:-1])
                                         if not active or s["version"] != active.version), None),
                "history": self.history[-20:]}
