"""The live feed: one poller thread turns file changes into numbered messages; SSE clients read them.

Every `monitor.poll_interval` (0.2 s by default) the poller looks at what can
change and publishes what did:

  metric          each new line of status/metrics.jsonl (train / eval / checkpoint)
  metrics_reset   metrics.jsonl was rewound after a crash-resume, or replaced
  event           each new line of status/events.jsonl
  status          the honest status (core.live_status.live_status + liveness) when it changes,
                  and every few seconds anyway so ages stay true
  system          a CPU/RAM/disk/GPU sample every monitor.system_sample_interval
  changed         {"what": queue | checkpoints | rankings | deployments | curriculum}: refetch that panel

Reading a file only when its size or mtime moved keeps an idle poll to a few
stat() calls. Messages are serialised once and kept in a ring buffer
(`monitor.replay_buffer`); a message's SSE id is `<boot>-<seq>`, so a client
reconnecting with `Last-Event-ID` gets exactly what it missed, and one whose
id is from another monitor process (or too old) gets a `reset` telling it to
reload everything. Polling, not inotify: it behaves the same on every
filesystem, and 0.2 s is well inside the 1 s the page promises.

Library only; the app starts it in its lifespan:
    feed = LiveFeed(cfg); feed.start(asyncio.get_running_loop()); ...; feed.stop()
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from core.queue_store import STATES, TrainingQueue
from core.state.events import EventTail
from monitoring import sources
from monitoring.metrics_index import MetricsIndex

logger = logging.getLogger(__name__)

STATUS_EVERY = 0.5
STATUS_KEEPALIVE = 5.0
EVENTS_KEPT = 2000
VOLATILE = ("status_age_s", "heartbeat_age_s")
CACHE_AFTER_S = 2.0  # save the index right after a first build longer than this
CACHE_MIN_LINES = 50_000  # and on shutdown when it holds more lines than this


def finite(obj):
    """The same structure with NaN/inf floats as None: records read back from metrics.jsonl may hold them
    (Python writes NaN), JSON for a browser may not."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Message:
    seq: int
    event: str
    data: str  # JSON, serialised once for every client


class EventLog:
    """Tails status/events.jsonl (core.state.events.EventTail); keeps the last EVENTS_KEPT events in memory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tail = EventTail(self.path, history_limit=EVENTS_KEPT)
        self.events: deque = deque(maxlen=EVENTS_KEPT)
        self.lock = threading.Lock()

    def refresh(self) -> list[dict]:
        """The events appended since the last call, as the JSON the page and the stream get."""
        new, reset, history = self.tail.read_new()
        if reset:
            with self.lock:
                self.events.clear()
                self.events.extend(e.view() for e in history)
        fresh = [e.view() for e in new]
        with self.lock:
            self.events.extend(fresh)
        return fresh

    def recent(self, limit: int, source: str | None = None) -> list[dict]:
        with self.lock:
            items = [e for e in self.events if source is None or e["source"] == source]
        return items[-limit:][::-1]


class LiveFeed:
    def __init__(self, cfg):
        self.cfg = cfg
        self.layout = cfg.layout
        self.boot = secrets.token_hex(4)
        self.index = MetricsIndex(self.layout.metrics, smoothing=cfg.monitor.ema_smoothing)
        self.cache_dir = self.layout.status / ".monitor-index"
        self.events = EventLog(self.layout.events)
        self.system = sources.SystemSampler(cfg)
        self.queue = TrainingQueue(cfg)
        self.buffer: deque[Message] = deque(maxlen=cfg.monitor.replay_buffer)
        self.seq = 0
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wake = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status_key = None
        self._status_at = 0.0
        self._status: dict | None = None
        self._system_at = 0.0
        self._stamps: dict[str, tuple] = {}
        self.ticks = 0
        self.last_tick_s = 0.0
        self.closing = False  # the server is stopping: SSE streams end cleanly instead of being cut

    def close_streams(self) -> None:
        self.closing = True
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._notify)

    # ------------------------------------------------------------ messages
    def publish(self, event: str, payload) -> int:
        data = json.dumps(finite(payload), default=str, allow_nan=False) if not isinstance(payload, str) else payload
        with self.lock:
            self.seq += 1
            self.buffer.append(Message(self.seq, event, data))
            seq = self.seq
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # loop closing during shutdown
                pass
        return seq

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        if wake is not None:
            wake.set()

    def event_id(self, seq: int) -> str:
        return f"{self.boot}-{seq}"

    def after(self, seq: int) -> list[Message]:
        """Messages with a number above `seq`, oldest first (walks back from the newest: O(new))."""
        out = []
        with self.lock:
            for m in reversed(self.buffer):
                if m.seq <= seq:
                    break
                out.append(m)
        return out[::-1]

    def resume_point(self, last_event_id: str | None) -> tuple[int, bool]:
        """(seq to continue after, replayable). Not replayable: no id, another boot, or older than the buffer."""
        with self.lock:
            current = self.seq
            oldest = self.buffer[0].seq if self.buffer else current + 1
        if not last_event_id:
            return current, False
        boot, _, num = last_event_id.strip().rpartition("-")
        try:
            seq = int(num)
        except ValueError:
            return current, False
        if boot != self.boot or seq > current or seq < oldest - 1:
            return current, False
        return seq, True

    async def wait_after(self, seq: int, timeout: float) -> None:
        """Return when a message past `seq` exists, or after `timeout`."""
        if self._wake is None:
            self._wake = asyncio.Event()
        with self.lock:
            if self.seq > seq:
                return
        wake = self._wake  # captured in the same step as the check: a later publish sets this one
        try:
            await asyncio.wait_for(wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -------------------------------------------------------------- poller
    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        if loop is not None:
            self._wake = asyncio.Event()
        t0 = time.perf_counter()
        cached = self.index.load(self.cache_dir)
        self.index.refresh()  # the first build is history, not news: nothing published
        build_s = time.perf_counter() - t0
        if not cached and build_s > CACHE_AFTER_S:
            self.save_index()  # a long build: keep it, so the next start (even after a crash) is quick
        self.events.refresh()
        self._poll_changes(publish=False)
        self._status = self._compute_status()
        self._status_key = self._key(self._status)
        self._status_at = time.monotonic()
        self.system.sample()
        logger.info("indexed %d metric lines in %.2fs%s", self.index.lines, build_s, " (from the saved index)" if cached else "")
        self._thread = threading.Thread(target=self._run, name="monitor-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self.index.lines > CACHE_MIN_LINES:
                self.save_index()
        self.loop = None

    def save_index(self) -> None:
        try:
            self.index.save(self.cache_dir)
        except OSError as exc:  # a full disk must not stop the monitor; the next start just rebuilds
            logger.warning("could not save the metrics index to %s: %s", self.cache_dir, exc)

    def _run(self) -> None:
        interval = self.cfg.monitor.poll_interval
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the feed outlives any one bad read
                logger.exception("monitor poll failed; continuing")
            self.last_tick_s = time.perf_counter() - t0
            self._stop.wait(max(0.01, interval - self.last_tick_s))

    def tick(self) -> None:
        self.ticks += 1
        records, reset = self.index.refresh()
        if reset is not None:
            self.publish("metrics_reset", dict(reset, generation=self.index.generation))
        for rec in records:
            self.publish("metric", rec)
        for ev in self.events.refresh():
            self.publish("event", ev)
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY:
            self._poll_changes(publish=True)
            status = self._compute_status()
            key = self._key(status)
            if key != self._status_key or now - self._status_at >= STATUS_KEEPALIVE or records:
                self._status_key = key
                self._status = status
                self._status_at = now
                self.publish("status", status)
            else:
                self._status = status
        if now - self._system_at >= self.cfg.monitor.system_sample_interval:
            self._system_at = now
            self.publish("system", self.system.sample())

    def _compute_status(self) -> dict:
        return sources.status(self.cfg, self.index.summary())

    @staticmethod
    def _key(status: dict) -> str:
        return json.dumps({k: v for k, v in status.items() if k not in VOLATILE}, sort_keys=True, default=str)

    def current_status(self) -> dict:
        return self._status if self._status is not None else self._compute_status()

    def _stamp(self, path: Path) -> tuple:
        try:
            st = os.stat(path)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return (0, 0, 0)

    def _poll_changes(self, publish: bool) -> None:
        q = self.layout.queue
        watched = {
            "queue": [q / s for s in STATES] + [self.layout.inbox],
            "checkpoints": [self.layout.current_model],
            "rankings": [self.layout.comparisons],
            "deployments": [self.layout.deployments],
            "curriculum": [self.layout.curriculum],
        }
        for what, paths in watched.items():
            stamp = tuple(self._stamp(p) for p in paths)
            if self._stamps.get(what) != stamp:
                self._stamps[what] = stamp
                if publish:
                    self.publish("changed", {"what": what})
