"""The generation loop: one worker thread that admits waiting requests and steps every live engine.

Requests are bound to an engine (a model version) when they are submitted,
so a swap never moves a request between versions. Each loop turn the thread
(1) drops aborted requests from the queue, (2) admits waiting requests into
free batch slots and prefills them per engine, (3) runs one batched decode
step on each engine that has rows, (4) retires finished rows, records their
metrics and frees any retired engine that has drained. All torch work runs
here, never on the asyncio event loop.

Library only: `Scheduler(metrics, max_batch_size, max_queue).start()`.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

import torch

from inference.engine import Event, ModelEngine, Sequence

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests waiting than `max_queue`."""


class Scheduler:
    def __init__(self, metrics, max_batch_size: int, max_queue: int):
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._cond = threading.Condition(threading.RLock())
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._engines: list[ModelEngine] = []   # every engine with a pending request, or the active one
        self._stop = False
        self.active: ModelEngine | None = None
        self._thread: threading.Thread | None = None
        self.on_engine_released = None  # callback(engine) for logging/registry bookkeeping

    # ---- called from the event loop / other threads ----------------------------------------------
    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self._run, name="cadence-scheduler", daemon=True)
        self._thread.start()
        return self

    def acquire(self, count: int = 1) -> ModelEngine:
        """The active engine, reserved for `count` sequences (so it cannot be released before `submit`/`unreserve`)."""
        with self._cond:
            engine = self.active
            if engine is None:
                raise RuntimeError("no model loaded")
            engine.pending += count
            return engine

    def unreserve(self, engine: ModelEngine, count: int = 1) -> None:
        """Give back reservations that never became submitted sequences (e.g. the request was invalid)."""
        with self._cond:
            engine.pending -= count
            self._cond.notify()

    def submit(self, seq: Sequence) -> None:
        """Queue a request whose engine was reserved with `acquire`; raises QueueFull (the reservation is kept)."""
        self.submit_all([seq])

    def submit_all(self, seqs: list[Sequence]) -> None:
        """Queue the sequences of one request (one per prompt) all or none; raises QueueFull (reservations kept)."""
        with self._cond:
            if len(self._waiting) + len(seqs) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests already waiting, this one adds {len(seqs)} "
                                f"(max_queue {self.max_queue})")
            self._waiting.extend(seqs)
            self._cond.notify()

    def flip(self, engine: ModelEngine) -> ModelEngine | None:
        """Make `engine` serve new requests; the previous one is retired and released once drained."""
        with self._cond:
            old, self.active = self.active, engine
            if engine not in self._engines:
                self._engines.append(engine)
            if old is not None and old is not engine:
                old.retired = True
            self._cond.notify()
            return old

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    @property
    def running(self) -> int:
        return sum(len(e.rows) for e in list(self._engines))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def draining(self) -> list[ModelEngine]:
        return [e for e in list(self._engines) if e.retired]

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread:
            self._thread.join(timeout)

    # ---- the worker thread -------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not any(e.rows for e in self._engines) \
                        and not any(e.retired and e.pending == 0 for e in self._engines):
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    break
                admitted = self._admit_locked()
            try:
                self._step(admitted)
            except Exception:  # a bug must not kill the loop: fail the affected requests, keep serving
                logger.exception("scheduler step failed")
        self._fail_all("server shutting down")

    def _admit_locked(self) -> dict[ModelEngine, list[Sequence]]:
        free = self.max_batch_size - self.running
        groups: dict[ModelEngine, list[Sequence]] = {}
        kept = collections.deque()
        while self._waiting:
            seq = self._waiting.popleft()
            if seq.aborted:
                self._done(seq, now=time.monotonic())
                continue
            if free > 0:
                groups.setdefault(seq.engine, []).append(seq)
                free -= 1
            else:
                kept.append(seq)
        self._waiting = kept
        return groups

    def _step(self, admitted: dict[ModelEngine, list[Sequence]]) -> None:
        for engine, seqs in admitted.items():
            try:
                done = engine.prefill(seqs)
            except Exception as exc:  # torch errors (OOM, NaN logits): these requests fail, the batch is intact
                logger.exception("prefill failed on %s", engine.version)
                for s in seqs:
                    if s not in engine.rows:
                        self._error(s, f"generation failed: {type(exc).__name__}: {exc}")
                continue
            now = time.monotonic()
            for s in done:
                self._done(s, now)
        for engine in list(self._engines):
            if engine.rows:
                try:
                    engine.decode_step()
                except Exception as exc:  # the whole batch of this engine is lost; others continue
                    logger.exception("decode step failed on %s", engine.version)
                    for s in engine.reset_batch():
                        self._error(s, f"generation failed: {type(exc).__name__}: {exc}")
            now = time.monotonic()
            for s in engine.drop_finished():
                self._done(s, now)
        self._release_drained()

    def _error(self, seq: Sequence, message: str) -> None:
        if not seq.finished:
            seq.finished = True
            seq.finish_reason = "error"
            seq.sink(Event(error=message))
        self._done(seq, time.monotonic())

    def _done(self, seq: Sequence, now: float) -> None:
        if getattr(seq, "_counted", False):
            return
        seq._counted = True
        with self._cond:
            seq.engine.pending -= 1
        if seq.aborted and not seq.finished:
            seq.finish_reason = "abort"
        self.metrics.observe_request(seq, now)

    def _release_drained(self) -> None:
        with self._cond:
            drained = [e for e in self._engines if e.retired and e.pending == 0 and not e.rows]
            for e in drained:
                self._engines.remove(e)
        for e in drained:
            logger.info("version %s drained; releasing its weights", e.version)
            e.release()
            if self.on_engine_released:
                self.on_engine_released(e)
        if drained and torch.cuda.is_available():
            torch.cuda.empty_cache()
        # No gc.collect() here: the weights go by refcount, and a full collection would stall every stream ~0.5 s.

    def _fail_all(self, message: str) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for s in waiting:
            self._error(s, message)
        for e in list(self._engines):
            for s in e.reset_batch():
                self._error(s, message)
