"""Lifecycle worker: score new checkpoints, decide the champion, deploy it, apply retention, watch the disk, feed the curriculum.

One pass every comparison.interval seconds, and at once when a new
checkpoint is published (a directory listing every
comparison.watch_interval), at low priority (os.nice comparison.nice) so
training is not starved. Each step's exceptions are
caught at the loop boundary and logged; the next pass tries again. On start
it first finishes any deployment a crash interrupted. Writes
.pids/lifecycle.pid (removed on exit) and holds .pids/lifecycle.lock.
SIGTERM/SIGINT stop it at the next safe point.

Run as:
    cadence lifecycle [--config config.json] [--once]      (services.py starts it as python -m management)
"""
from __future__ import annotations

import logging
import threading
import time

from core.procs import AlreadyRunning
from data_manager.manager import DataManager
from management.auto_disk_manager import check
from management.deployment_orchestrator import Orchestrator, active_content_id, tried_content_ids
from management.champion_rule import pick_champion
from management.model_comparison_engine import load_ledger, record_champion, record_verdicts, score_new_checkpoints
from management.retention import apply_retention, write_protected
from trainer.checkpoint import list_checkpoints

logger = logging.getLogger("management")


class LifecycleWorker:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stop = threading.Event()
        self._last_disk_check = 0.0

    def recover(self) -> None:
        if self.cfg.deploy.enabled and self.cfg.deploy.targets:
            with Orchestrator(self.cfg) as orch:
                orch.recover()

    def score(self) -> None:
        if self.cfg.comparison.enabled:
            score_new_checkpoints(self.cfg)

    def champion_and_deploy(self) -> dict | None:
        cfg = self.cfg
        baseline = active_content_id(cfg)
        tried = tried_content_ids(cfg)
        record_verdicts(cfg, baseline, tried)  # both rules' verdicts, kept for the ranking page and the benchmark
        ledger = load_ledger(cfg)
        # only what is still on disk: the trainer's rolling retention removes checkpoints the scorer has judged (a
        # removed champion was picked again on every pass, its deploy failing, until a newer one passed)
        entry, decision = pick_champion(cfg, ledger, baseline, tried, set(self._published()))
        if entry is None:
            if decision is not None:
                logger.info("no champion: %s", decision.reason)
            return None
        record_champion(cfg, entry, decision, baseline)
        write_protected(cfg)  # the champion is kept from the trainer's rolling retention while it is deployed
        logger.info("champion %s: %s", entry["checkpoint"], decision.reason)
        if not (cfg.deploy.enabled and cfg.deploy.targets):
            return None
        with Orchestrator(cfg) as orch:
            result = orch.deploy(entry["checkpoint"])
        logger.info("deploy of %s: %s", entry["checkpoint"], result.get("status"))
        return result

    def retention(self) -> None:
        apply_retention(self.cfg)

    def disk(self) -> None:
        if time.monotonic() - self._last_disk_check >= self.cfg.retention.disk_check_interval:
            self._last_disk_check = time.monotonic()
            check(self.cfg)

    def data_manager(self) -> None:
        if not self.cfg.data_manager.enabled:
            return

        DataManager(self.cfg).tick()

    def run_once(self) -> None:
        for name, step in (("recover", self.recover), ("score", self.score), ("deploy", self.champion_and_deploy),
                           ("retention", self.retention), ("disk", self.disk), ("data_manager", self.data_manager)):
            if self.stop.is_set():
                return
            try:
                step()
            except AlreadyRunning:
                logger.info("%s: another deployment holds the lock; next pass", name)
            except Exception:  # loop boundary: one failing step must not stop the worker
                logger.exception("lifecycle step %s failed", name)

    def _published(self) -> tuple[str, ...]:
        return tuple(c.path.name for c in list_checkpoints(self.cfg.layout.current_model))

    def run(self, once: bool = False) -> None:
        """A full pass every comparison.interval, and at once when a new checkpoint is published
        (looked for every comparison.watch_interval: one directory listing)."""
        seen, next_pass = None, 0.0
        while not self.stop.is_set():
            try:
                published = self._published()
            except OSError:
                published = seen
            if published != seen or time.monotonic() >= next_pass:
                self.run_once()
                if once:
                    return
                seen, next_pass = published, time.monotonic() + self.cfg.comparison.interval
            self.stop.wait(min(self.cfg.comparison.watch_interval, self.cfg.comparison.interval))
