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

from core.state.metrics import decode_metric_lines

logger = logging.getLogger(__name__)

TRAIN_FIELDS = ("loss", "lr", "tokens_per_s", "grad_norm")
EVAL_FIELDS = ("val_loss", "fixed_val_loss")
EMA_OF = {"train": ("loss",), "eval": ("val_loss",)}
READ_CHUNK = 8 << 20
PREVIEWS_KEPT = 20
CACHE_VERSION = 1


def _num(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


NAN = math.nan
INF = math.inf
NL = b"\n"


def column(recs: list[dict], key: str) -> list[float]:
    """One numeric field of many records as floats (NaN where missing or not a number)."""
    vals = [r.get(key) for r in recs]
    return [v if type(v) is float else (float(v) if type(v) is int else NAN) for v in vals]


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

    def run(self, xs: list[float]) -> list[float]:
        """push() over many values, inlined (this is the index build's inner loop)."""
        s, acc, n = self.s, self.acc, self.n
        decay = s ** n
        out = []
        append = out.append
        for x in xs:
            if x == x and x != INF and x != -INF:
                acc = s * acc + (1 - s) * x
                n += 1
                decay *= s
            append((acc / (1 - decay) if s > 0 else acc) if n else NAN)
        self.acc, self.n = acc, n
        return out

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

    def extend(self, recs: list[dict], offsets: list[int], extra: dict | None = None) -> None:
        """Append records (one column at a time: list comprehensions, not a call per value)."""
        self.step.extend(column(recs, "global_step"))
        self.ts.extend(column(recs, "ts"))
        self.offset.extend(offsets)
        for f in self.fields:
            self.cols[f].extend(extra[f] if extra and f in extra else column(recs, f))
        for f, ema in self.emas.items():
            self.cols[f + "_ema"].extend(ema.run(column(recs, f)))

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
    buckets (the remainder joins the last one); each series contributes its argmin and argmax per bucket,
    NaNs ignored. Without NaNs it is three passes over a view of the data, no copy."""
    n = len(values[0]) if values else 0
    if n <= max_points:
        return np.arange(n)
    buckets = max(1, max_points // (2 * max(1, len(values))))
    size = n // buckets
    body = buckets * size
    keep = [np.array([0, n - 1])]
    rows = np.arange(buckets) * size
    for y in values:
        if np.isnan(y).any():
            lo, hi = np.where(np.isnan(y), np.inf, y), np.where(np.isnan(y), -np.inf, y)
        else:
            lo = hi = y
        for data, pick in ((lo, np.argmin), (hi, np.argmax)):
            grid = data[:body].reshape(buckets, size)
            arg = pick(grid, axis=1)
            ok = np.isfinite(grid[np.arange(buckets), arg])
            keep.append((rows + arg)[ok])
            if body < n:  # the remainder
                tail = data[body:]
                j = int(pick(tail))
                if math.isfinite(tail[j]):
                    keep.append(np.array([body + j]))
    return np.unique(np.concatenate(keep))


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

    # --------------------------------------------------------------- cache
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to `folder` (columns as raw arrays + a JSON header; temp + rename), so a restart
        loads it in a fraction of a second and only tails what was appended since."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            arrays = {"line_off": self.line_off.tobytes(), "line_crc": self.line_crc.tobytes()}
            series = {}
            for s in (self.train, self.eval):
                names = ["step", "ts", "offset", *s.cols]
                for name in names:
                    arr = s.cols[name] if name in s.cols else getattr(s, name)
                    arrays[f"{s.kind}.{name}"] = arr.tobytes()
                series[s.kind] = {"emas": {f: [e.acc, e.n] for f, e in s.emas.items()}, "rows": len(s)}
            header = {"version": CACHE_VERSION, "inode": self.inode, "pos": self.pos, "smoothing": self.smoothing,
                      "lines": self.lines, "bad_lines": self.bad_lines, "series": series,
                      "checkpoints": self.checkpoints, "previews": list(self.previews), "last": self.last,
                      "arrays": {k: len(v) for k, v in arrays.items()}}
        data = folder / "metrics-index.bin"
        tmp = folder / ".metrics-index.bin.tmp"
        with open(tmp, "wb") as fh:
            for k in header["arrays"]:
                fh.write(arrays[k])
        os.replace(tmp, data)
        hdr = folder / "metrics-index.json"
        tmp = folder / ".metrics-index.json.tmp"
        tmp.write_text(json.dumps(header, default=str))
        os.replace(tmp, hdr)  # the header last: it names the data it describes
        return data

    def load(self, folder: str | os.PathLike) -> bool:
        """Restore a saved index if it belongs to this metrics file (same inode; the next refresh() checks
        the last indexed line and handles a rewind made while the monitor was down). False: build anew."""
        folder = Path(folder)
        try:
            header = json.loads((folder / "metrics-index.json").read_text())
            st = os.stat(self.path)
            if (header.get("version") != CACHE_VERSION or header.get("inode") != st.st_ino
                    or header.get("smoothing") != self.smoothing):
                return False
            blob = (folder / "metrics-index.bin").read_bytes()
            if len(blob) != sum(header["arrays"].values()):
                return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        with self.lock:
            self._reset_state()
            pos = 0
            chunks = {}
            for k, n in header["arrays"].items():
                chunks[k] = blob[pos:pos + n]
                pos += n
            self.line_off.frombytes(chunks["line_off"])
            self.line_crc.frombytes(chunks["line_crc"])
            for s in (self.train, self.eval):
                for name in ["step", "ts", "offset", *s.cols]:
                    arr = s.cols[name] if name in s.cols else getattr(s, name)
                    arr.frombytes(chunks[f"{s.kind}.{name}"])
                for f, (acc, n) in header["series"][s.kind]["emas"].items():
                    s.emas[f].acc, s.emas[f].n = acc, n
            self.checkpoints = header["checkpoints"]
            self.previews.extend(header["previews"])
            self.last = header["last"]
            self.pos, self.inode = header["pos"], header["inode"]
            self.lines, self.bad_lines = header["lines"], header["bad_lines"]
        logger.info("loaded the metrics index from %s (%d lines)", folder, self.lines)
        return True

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
        lines = block.split(b"\n")[:-1]
        offs = []
        pos = base
        for line in lines:
            offs.append(pos)
            pos += len(line) + 1
        crcs = [zlib.crc32(NL, zlib.crc32(line)) for line in lines]
        records = decode_metric_lines(lines, offs)
        with self.lock:
            self.bad_lines += sum(1 for line in lines if line.strip()) - len(records)
            self._add_all(records)
            self.pos = base + len(block)
            self.line_off.extend(offs)
            self.line_crc.extend(crcs)
            self.lines += len(records)
        # the live feed only wants recent records; a first build of a huge file must not flood it
        new.extend(rec for _, rec in records[-5000:])
        if len(new) > 5000:
            del new[:-5000]

    def _add_all(self, records: list[tuple[int, dict]]) -> None:
        """Index records in file order, a run of same-type records at a time (evals need the train EMA so far)."""
        i, n = 0, len(records)
        while i < n:
            kind = records[i][1].get("type")
            j = i + 1
            while j < n and records[j][1].get("type") == kind:
                j += 1
            run = records[i:j]
            recs = [r for _, r in run]
            offsets = [o for o, _ in run]
            if kind == "train":
                self.train.extend(recs, offsets)
            elif kind == "eval":
                train_ema = self.train.cols["loss_ema"][-1] if len(self.train) else math.nan
                gaps = [v - train_ema for v in column(recs, "val_loss")]
                self.eval.extend(recs, offsets, {"gap": gaps})
                for r in recs[-PREVIEWS_KEPT:]:
                    if isinstance(r.get("preview"), dict):
                        self.previews.append({"global_step": r.get("global_step"), "ts": r.get("ts"), **r["preview"]})
            elif kind == "checkpoint":
                for o, r in run:
                    self.checkpoints.append({"global_step": r.get("global_step"), "path": r.get("path"),
                                             "reason": r.get("reason"), "ts": r.get("ts"), "offset": o})
            if kind in ("train", "eval", "checkpoint"):
                self.last[kind] = recs[-1]
            i = j

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
                steps = np.frombuffer(series.step[:n], dtype=np.float64)  # a copy: searched outside numpy's view rules
                if step_min is not None:
                    lo = int(np.searchsorted(steps, step_min, side="left"))
                if step_max is not None:
                    hi = int(np.searchsorted(steps, step_max, side="right"))
                hi = max(hi, lo)
            # views, not copies, under the lock (the arrays cannot grow while a view of them exists);
            # the poller waits a few ms for its next append
            views = {name: np.frombuffer(arr, dtype=np.float64, count=n)[lo:hi]
                     for name, arr in [("step", series.step), ("ts", series.ts)] + [(f, series.cols[f]) for f in fields]}
            try:
                idx = minmax_indices([views[f] for f in fields], max_points)
                picked = {name: v[idx] for name, v in views.items()}
            finally:
                del views
            generation = self.generation
        out = {"kind": kind, "total": n, "in_range": hi - lo, "returned": int(len(idx)),
               "downsampled": len(idx) < (hi - lo), "generation": generation,
               "step": [int(s) if math.isfinite(s) else None for s in picked["step"].tolist()],
               "ts": _jsonable(picked["ts"])}
        for f in fields:
            out[f] = _jsonable(picked[f])
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
