"""An in-memory, incrementally built index of `status/metrics.jsonl`, and min-max downsampling.

The trainer appends one JSON line per logged step ("train"), per evaluation
("eval", with the model's preview answer) and per checkpoint ("checkpoint").
The monitor never re-reads that file per request: `MetricsIndex.refresh()`
reads only the bytes appended since its last look and keeps compact columns
(`array('d')`, 8 bytes a value) per record type, so a history request for a
run of a million steps is a numpy slice plus a downsampling pass.

Two things can happen to the file behind the index's back, and both are
handled: after a crash the trainer resumes from its last checkpoint and cuts
the lines past that step from the end (`StatusWriter.rewind_metrics`), so the
file shrinks (or shrinks and grows again: the last indexed line is re-checked
before every read); and the file can be replaced or removed (new inode). The
first drops the rows past the cut, the second rebuilds the index from zero;
`refresh()` reports either so the live feed can tell the page.

Downsampling is min-max per bucket over each requested field (spikes in the
loss survive; an averaging or stride scheme would hide them), always keeping
the first and last point.

Library only; used as:
    index = MetricsIndex(layout.metrics, smoothing=0.95)
    new_records, reset = index.refresh()
    index.query("train", ["loss", "loss_ema"], max_points=2000)
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import zlib
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TRAIN_FIELDS = ("loss", "lr", "tokens_per_s", "grad_norm", "step_time_s", "tokens")
EVAL_FIELDS = ("val_loss", "fixed_val_loss")
EMA_OF = {"train": ("loss",), "eval": ("val_loss",)}
READ_CHUNK = 8 << 20
PREVIEWS_KEPT = 20


def _num(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


class _Ema:
    """TensorBoard-style debiased exponential moving average over the finite values seen."""

    def __init__(self, smoothing: float):
        self.s = smoothing
        self.acc = 0.0
        self.n = 0

    def push(self, x: float) -> float:
        if math.isnan(x) or math.isinf(x):
            return self.value()
        self.acc = self.s * self.acc + (1 - self.s) * x
        self.n += 1
        return self.value()

    def value(self) -> float:
        if self.n == 0:
            return math.nan
        return self.acc / (1 - self.s ** self.n) if self.s > 0 else self.acc


@dataclass
class Series:
    """Columns of one record type: step, ts, byte offset of the line, one column per field (+ EMA columns)."""

    kind: str
    fields: tuple[str, ...]
    smoothing: float
    step: array = field(default_factory=lambda: array("d"))
    ts: array = field(default_factory=lambda: array("d"))
    offset: array = field(default_factory=lambda: array("q"))
    cols: dict = field(default_factory=dict)
    emas: dict = field(default_factory=dict)

    def __post_init__(self):
        for f in self.fields:
            self.cols[f] = array("d")
        if self.kind == "eval":
            # evaluations come every eval_steps (50 by default): the same smoothing per point would lag by
            # hundreds of steps, so validation points get the smoothing of ~10 train points
            self.smoothing = self.smoothing ** 10
        for f in EMA_OF.get(self.kind, ()):
            self.cols[f + "_ema"] = array("d")
            self.emas[f] = _Ema(self.smoothing)

    def __len__(self) -> int:
        return len(self.step)

    def append(self, rec: dict, offset: int, extra: dict | None = None) -> None:
        self.step.append(_num(rec.get("global_step")))
        self.ts.append(_num(rec.get("ts")))
        self.offset.append(offset)
        for f in self.fields:
            value = extra[f] if extra and f in extra else rec.get(f)
            self.cols[f].append(_num(value))
        for f, ema in self.emas.items():
            self.cols[f + "_ema"].append(ema.push(_num(rec.get(f))))

    def truncate_from_offset(self, cut: int) -> int:
        """Drop rows whose line starts at or after byte `cut`; returns how many were dropped."""
        n = len(self.offset)
        keep = n
        while keep > 0 and self.offset[keep - 1] >= cut:
            keep -= 1
        if keep == n:
            return 0
        for col in (self.step, self.ts, self.offset, *self.cols.values()):
            del col[keep:]
        for f in self.emas:  # rare (a crash-resume): recompute the EMA state from what remains
            ema = self.emas[f] = _Ema(self.smoothing)
            for x in self.cols[f]:
                ema.push(x)
        return n - keep

    def columns(self, names: list[str], lo: int, hi: int) -> dict[str, np.ndarray]:
        """Copies of rows [lo, hi) (copies: the arrays keep growing and must not be exported while they do)."""
        out = {"step": np.frombuffer(self.step[lo:hi], dtype=np.float64),
               "ts": np.frombuffer(self.ts[lo:hi], dtype=np.float64)}
        for name in names:
            out[name] = np.frombuffer(self.cols[name][lo:hi], dtype=np.float64)
        return out


def minmax_indices(values: list[np.ndarray], max_points: int) -> np.ndarray:
    """Row indices to keep so every series in `values` keeps its min and max per bucket (plus both ends).

    With n rows and a budget of `max_points`, rows are cut into max_points // (2 * len(values)) equal
    buckets; each series contributes its argmin and argmax per bucket (NaNs ignored)."""
    n = len(values[0]) if values else 0
    if n <= max_points:
        return np.arange(n)
    buckets = max(1, max_points // (2 * max(1, len(values))))
    size = math.ceil(n / buckets)
    pad = buckets * size - n
    keep = [np.array([0, n - 1])]
    rows = np.arange(buckets) * size
    for y in values:
        lo = np.where(np.isnan(y), np.inf, y)
        hi = np.where(np.isnan(y), -np.inf, y)
        if pad:
            lo = np.concatenate([lo, np.full(pad, np.inf)])
            hi = np.concatenate([hi, np.full(pad, -np.inf)])
        lo, hi = lo.reshape(buckets, size), hi.reshape(buckets, size)
        amin, amax = lo.argmin(axis=1), hi.argmax(axis=1)
        ok_min = np.isfinite(lo[np.arange(buckets), amin])
        ok_max = np.isfinite(hi[np.arange(buckets), amax])
        keep.append((rows + amin)[ok_min])
        keep.append((rows + amax)[ok_max])
    idx = np.unique(np.concatenate(keep))
    return idx[idx < n]


def _jsonable(arr: np.ndarray, digits: int | None = None) -> list:
    """A float column as a JSON list: NaN/inf become null (JSON has no NaN)."""
    out = arr.tolist()
    bad = ~np.isfinite(arr)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            out[i] = None
    return out


class MetricsIndex:
    """Tails metrics.jsonl into per-type columns; thread-safe (one writer thread, many readers)."""

    def __init__(self, path: str | os.PathLike, smoothing: float = 0.95):
        self.path = Path(path)
        self.smoothing = smoothing
        self.lock = threading.Lock()
        self._reset_state()

    def _reset_state(self) -> None:
        self.train = Series("train", TRAIN_FIELDS, self.smoothing)
        self.eval = Series("eval", EVAL_FIELDS + ("gap",), self.smoothing)
        self.checkpoints: list[dict] = []
        self.previews: deque = deque(maxlen=PREVIEWS_KEPT)
        self.last: dict[str, dict] = {}
        self.pos = 0  # byte offset just past the last complete line indexed
        self.inode: int | None = None
        self.mtime_ns = 0
        # every indexed line's offset and crc32: tells which prefix of the file is still what was indexed
        self.line_off = array("q")
        self.line_crc = array("I")
        self.lines = 0
        self.bad_lines = 0
        self.generation = 0  # bumped whenever indexed rows are dropped (rewind or replaced file)

    # ------------------------------------------------------------- reading
    def refresh(self) -> tuple[list[dict], dict | None]:
        """Index the lines appended since the last call. Returns (new records, reset) where reset is None,
        {"reason": "rewind", "global_step": N} (rows past step N dropped) or {"reason": "replaced"}."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            with self.lock:
                had = self.lines > 0
                if had:
                    gen = self.generation + 1
                    self._reset_state()
                    self.generation = gen
            return [], ({"reason": "replaced"} if had else None)
        reset = None
        with self.lock:
            if self.inode is not None and st.st_ino != self.inode:
                gen = self.generation + 1
                self._reset_state()
                self.generation = gen
                reset = {"reason": "replaced"}
            self.inode = st.st_ino
            if st.st_size == self.pos and st.st_mtime_ns == self.mtime_ns and reset is None:
                return [], None
            self.mtime_ns = st.st_mtime_ns
        try:
            with open(self.path, "rb") as fh:
                if reset is None:
                    reset = self._check_rewind(fh, st.st_size)
                return self._read_new(fh), reset
        except FileNotFoundError:
            return [], reset

    def _line_ok(self, fh, i: int, size: int) -> bool:
        off = self.line_off[i]
        end = self.line_off[i + 1] if i + 1 < len(self.line_off) else self.pos
        if end > size:
            return False
        fh.seek(off)
        return zlib.crc32(fh.read(end - off)) == self.line_crc[i]

    def _check_rewind(self, fh, size: int) -> dict | None:
        """Lines already indexed that changed (the trainer's rewind cuts the tail, then appends again): drop
        them. The file is always an intact prefix plus new bytes, so a binary search over the indexed lines
        (one read each) finds where the prefix ends; when the last indexed line is intact nothing changed."""
        with self.lock:
            n = len(self.line_off)
            if n == 0 or self._line_ok(fh, n - 1, size):
                return None
            lo, hi = 0, n - 1  # first bad line is in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                if self._line_ok(fh, mid, size):
                    lo = mid + 1
                else:
                    hi = mid
            cut = self.line_off[lo]
            dropped = self.train.truncate_from_offset(cut) + self.eval.truncate_from_offset(cut)
            self.checkpoints = [c for c in self.checkpoints if c["offset"] < cut]
            del self.line_off[lo:]
            del self.line_crc[lo:]
            self.pos = cut
            self.generation += 1
            steps = [s.step[-1] for s in (self.train, self.eval) if len(s)]
            step = int(max(steps)) if steps else 0
            self.last = {k: v for k, v in self.last.items() if (v.get("global_step") or 0) <= step}
            self.previews = deque((p for p in self.previews if (p.get("global_step") or 0) <= step),
                                  maxlen=PREVIEWS_KEPT)
            logger.info("metrics.jsonl was rewound to step %s (%d indexed rows dropped)", step, dropped)
            return {"reason": "rewind", "global_step": step}

    def _read_new(self, fh) -> list[dict]:
        new: list[dict] = []
        with self.lock:
            pos = self.pos
        fh.seek(pos)
        carry = b""
        base = pos
        while True:
            chunk = fh.read(READ_CHUNK)
            if not chunk:
                break
            data = carry + chunk
            end = data.rfind(b"\n")
            if end < 0:
                carry = data
                continue
            complete, carry = data[: end + 1], data[end + 1:]
            self._index_block(complete, base, new)
            base += len(complete)
        return new

    def _index_block(self, block: bytes, base: int, new: list[dict]) -> None:
        records = []
        start = 0
        offs, crcs = [], []
        for line in block.split(b"\n")[:-1]:
            offset = base + start
            start += len(line) + 1
            offs.append(offset)
            crcs.append(zlib.crc32(line + b"\n"))
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.bad_lines += 1
                continue
            if isinstance(rec, dict):
                records.append((offset, rec))
        with self.lock:
            for offset, rec in records:
                self._add(rec, offset)
            self.pos = base + len(block)
            self.line_off.extend(offs)
            self.line_crc.extend(crcs)
            self.lines += len(records)
        # the live feed only wants recent records; a first build of a huge file must not flood it
        new.extend(rec for _, rec in records[-5000:])
        if len(new) > 5000:
            del new[:-5000]

    def _add(self, rec: dict, offset: int) -> None:
        kind = rec.get("type")
        if kind == "train":
            self.train.append(rec, offset)
        elif kind == "eval":
            train_ema = self.train.cols["loss_ema"][-1] if len(self.train) else math.nan
            gap = _num(rec.get("val_loss")) - train_ema
            self.eval.append(rec, offset, {"gap": gap})
            if isinstance(rec.get("preview"), dict):
                self.previews.append({"global_step": rec.get("global_step"), "ts": rec.get("ts"), **rec["preview"]})
        elif kind == "checkpoint":
            self.checkpoints.append({"global_step": rec.get("global_step"), "path": rec.get("path"),
                                     "reason": rec.get("reason"), "ts": rec.get("ts"), "offset": offset})
        else:
            return
        self.last[kind] = rec

    # ------------------------------------------------------------- queries
    def series(self, kind: str) -> Series:
        if kind not in ("train", "eval"):
            raise ValueError(f"kind must be train or eval, got {kind!r}")
        return self.train if kind == "train" else self.eval

    def query(self, kind: str, fields: list[str], max_points: int = 2000,
              step_min: float | None = None, step_max: float | None = None) -> dict:
        """Rows of `kind` within [step_min, step_max], downsampled to about `max_points` (min-max per field)."""
        series = self.series(kind)
        unknown = [f for f in fields if f not in series.cols]
        if unknown:
            raise ValueError(f"unknown field(s) for {kind}: {', '.join(unknown)}; known: {', '.join(series.cols)}")
        with self.lock:
            n = len(series)
            lo, hi = 0, n
            if step_min is not None or step_max is not None:
                steps = np.frombuffer(series.step[:n], dtype=np.float64)
                if step_min is not None:
                    lo = int(np.searchsorted(steps, step_min, side="left"))
                if step_max is not None:
                    hi = int(np.searchsorted(steps, step_max, side="right"))
                hi = max(hi, lo)
            cols = series.columns(fields, lo, hi)
            generation = self.generation
        idx = minmax_indices([cols[f] for f in fields], max_points)
        downsampled = len(idx) < (hi - lo)
        out = {"kind": kind, "total": n, "in_range": hi - lo, "returned": int(len(idx)), "downsampled": downsampled,
               "generation": generation,
               "step": [int(s) if math.isfinite(s) else None for s in cols["step"][idx].tolist()],
               "ts": _jsonable(cols["ts"][idx])}
        for f in fields:
            out[f] = _jsonable(cols[f][idx])
        return out

    def summary(self) -> dict:
        """Latest records, recent previews, checkpoints and the overfitting check, for the status panel."""
        with self.lock:
            gaps = list(self.eval.cols["gap"][-8:])
            vals = list(self.eval.cols["val_loss"][-8:])
            train_ema = self.train.cols["loss_ema"][-1] if len(self.train) else None
            return {"last_train": self.last.get("train"), "last_eval": self.last.get("eval"),
                    "last_checkpoint": self.last.get("checkpoint"), "previews": list(self.previews)[::-1],
                    "checkpoints": [{k: v for k, v in c.items() if k != "offset"} for c in self.checkpoints[-200:]],
                    "counts": {"train": len(self.train), "eval": len(self.eval), "checkpoint": len(self.checkpoints),
                               "lines": self.lines, "bad_lines": self.bad_lines},
                    "train_loss_ema": train_ema if train_ema is None or math.isfinite(train_ema) else None,
                    "overfitting": overfitting_check(gaps, vals), "generation": self.generation}


def overfitting_check(gaps: list[float], val_losses: list[float], window: int = 4, min_gap: float = 0.02) -> dict:
    """Warn when the validation - train(EMA) gap grew at each of the last `window` evals and ends above
    `min_gap` while validation loss itself went up: the model is fitting the training files, not the task."""
    pts = [(g, v) for g, v in zip(gaps, val_losses) if math.isfinite(g) and math.isfinite(v)]
    recent = pts[-window:]
    out = {"warning": False, "gaps": [round(g, 5) for g, _ in pts], "window": window, "message": None}
    if len(recent) < window:
        return out
    g = [p[0] for p in recent]
    v = [p[1] for p in recent]
    growing = all(b > a for a, b in zip(g, g[1:]))
    if growing and g[-1] > min_gap and v[-1] > v[0]:
        out["warning"] = True
        out["message"] = (f"validation/train gap grew at each of the last {window} evals "
                          f"({g[0]:.3f} -> {g[-1]:.3f}) while validation loss rose ({v[0]:.3f} -> {v[-1]:.3f}): "
                          "possible overfitting")
    return out
