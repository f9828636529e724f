"""Ingest speed: drop -> queued latency, QUICK throughput, STANDARD throughput, each against a baseline in the same run.

1. Latency: an Ingestor runs in a thread with inotify (as in the daemon); a
   ~10 MB chat JSONL is copied into inbox/ (write + close), and the time from
   the close to the file's sidecar appearing in queue/normal/ is measured
   (spec + QUICK validation, sha256, staging and queue renames included). Goal <= 2 s.
   Printed beside it: the time to simply read the file once (the floor).
2. QUICK throughput in MB/s on a 100k-line file, against a bare
   `for line in f: json.loads(line)` loop over the same bytes.
3. STANDARD examples/s (trainer.data.encode_examples through the validator:
   chat template, offsets, loss masks, truncation, length statistics) as a
   ratio to raw batched tokenization of the same rendered texts
   (`tokenizer(texts)` with the same batch size). Goal >= 0.8.

Run as:
    python3 benchmarks/ingest.py [--latency-runs 5] [--lines 100000] [--standard-rows 20000] [--preset tiny] [--write-docs]
"""
from __future__ import annotations

import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/ingest.py`: the repo root, not benchmarks/

import sys
from pathlib import Path


import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time

from benchmarks.report import BenchmarkRun
from core.config import from_dict
from core.state.queue_records import sidecar_path

WORDS = ("the a is of and to in that it for on with as you at this but by from they we say her she or will my one all "
         "would there what so up out if about who get which go me when make can like time no just him know take "
         "people into year your good some could them see other than then now look only come its over think also "
         "binary number answer result puzzle syllable clue word add multiply").split()


def chat_row(rng: random.Random, i: int, lo: int = 8, hi: int = 60) -> dict:
    user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    reply = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    return {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": f"#{i} {user}?"},
                         {"role": "assistant", "content": f"{reply}."}]}


def write_rows(path: Path, n: int, seed: int, target_bytes: int | None = None) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        i = written = 0
        while (target_bytes is None and i < n) or (target_bytes is not None and written < target_bytes):
            line = json.dumps(chat_row(rng, i)) + "\n"
            fh.write(line)
            written += len(line)
            i += 1
    return path


def make_cfg(base: Path, model_dir: Path, **daemon) -> object:
    cfg = from_dict({"paths": {"base_dir": str(base)},
                     "model": {"base_model": str(model_dir), "max_length": 1024},
                     "training": {"micro_batch_tokens": 1024},
                     "daemon": {"settle_seconds": 2.0, "poll_interval": 30.0, **daemon}}, base)
    cfg.layout.ensure()
    return cfg


def bench_latency(work: Path, model_dir: Path, runs: int) -> dict:
    from core.ingest import Ingestor

    cfg = make_cfg(work / "latency", model_dir)
    ing = Ingestor(cfg)
    stop = threading.Event()
    thread = threading.Thread(target=ing.run_forever, args=(stop,), daemon=True)
    thread.start()
    while ing.observer is None:
        time.sleep(0.01)
    lat, read_floor = [], []
    try:
        for r in range(runs):
            src = write_rows(work / f"src{r}.jsonl", 0, seed=100 + r, target_bytes=10 * 1024 * 1024)
            size = src.stat().st_size
            t = time.perf_counter()
            with open(src, "rb") as fh:
                while fh.read(1 << 20):
                    pass
            read_floor.append(time.perf_counter() - t)
            meta = sidecar_path(cfg.layout.queue_dir("normal") / f"drop{r}.jsonl", "meta")
            with open(src, "rb") as fin, open(cfg.layout.inbox / f"drop{r}.jsonl", "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
            t_close = time.perf_counter()
            while not meta.exists():
                if time.perf_counter() - t_close > 30:
                    raise RuntimeError("file not queued within 30 s")
                time.sleep(0.002)
            lat.append(time.perf_counter() - t_close)
            src.unlink()
    finally:
        stop.set()
        thread.join(10)
    return {"size_mb": size / 1e6, "latency_s": lat, "read_floor_s": read_floor}


def bench_quick(work: Path, model_dir: Path, lines: int) -> dict:
    from core.validation.validator import DataValidator

    cfg = make_cfg(work / "quick", model_dir)
    path = write_rows(work / "quick.jsonl", lines, seed=7)
    size = path.stat().st_size
    v = DataValidator(cfg)
    v.quick(path, "chat_sft_v1")  # page cache warm for both
    t = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            json.loads(line)
    base = time.perf_counter() - t
    t = time.perf_counter()
    rep = v.quick(path, "chat_sft_v1")
    quick = time.perf_counter() - t
    assert rep.ok and rep.stats["examples"] == lines, rep.summary()
    return {"size_mb": size / 1e6, "lines": lines, "quick_s": quick, "json_loads_s": base}


def bench_standard(work: Path, model_dir: Path, rows_n: int, batch: int) -> dict:
    from core.validation.validator import DataValidator
    from trainer.data import load_tokenizer

    cfg = make_cfg(work / "standard", model_dir)
    rng = random.Random(11)
    rows = [chat_row(rng, i, 20, 200) for i in range(rows_n)]
    path = work / "standard.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(model_dir)
    texts = tok.apply_chat_template([r["messages"] for r in rows], tokenize=False)
    v = DataValidator(cfg, tokenizer=tok)
    v.standard(path, "chat_sft_v1", batch_size=batch)  # warm-up
    # time spent inside the trainer's encoder, to tell its cost from the validator's own
    import trainer.data as trainer_data

    real_encode, in_encoder = trainer_data.encode_examples, [0.0]

    def timed_encode(*a, **k):
        t0 = time.perf_counter()
        try:
            return real_encode(*a, **k)
        finally:
            in_encoder[0] += time.perf_counter() - t0

    trainer_data.encode_examples = timed_encode
    best_raw = best_std = float("inf")
    encoder_share = 0.0
    try:
        for _ in range(3):
            t = time.perf_counter()
            for i in range(0, len(texts), batch):
                tok(texts[i:i + batch], add_special_tokens=False)
            best_raw = min(best_raw, time.perf_counter() - t)
            in_encoder[0] = 0.0
            t = time.perf_counter()
            rep = v.standard(path, "chat_sft_v1", batch_size=batch)
            took = time.perf_counter() - t
            if took < best_std:
                best_std, encoder_share = took, in_encoder[0] / took
    finally:
        trainer_data.encode_examples = real_encode
    assert rep.stats["examples"] == rows_n, rep.summary()
    return {"rows": rows_n, "raw_s": best_raw, "standard_s": best_std, "tokens": rep.stats["tokens"],
            "encoder_share": encoder_share}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the ingest path (latency, QUICK, STANDARD).")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--lines", type=int, default=100_000, help="lines of the QUICK throughput file")
    parser.add_argument("--standard-rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1024, help="STANDARD and baseline tokenization batch size")
    parser.add_argument("--preset", default="tiny", help="scripts/make_tiny_model.py preset for the tokenizer")
    parser.add_argument("--model", default=None, help="use this model folder's tokenizer instead of building one")
    parser.add_argument("--write-docs", action="store_true", help="write the result table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    run = BenchmarkRun.start("ingest", argv=None if argv is None else [__file__, *argv])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.CRITICAL)
    work = Path(tempfile.mkdtemp(prefix="cadence-ingest-bench-"))
    try:
        if args.model:
            model_dir = Path(args.model)
        else:
            from scripts.make_tiny_model import build_model

            model_dir = build_model(work / "model", preset=args.preset)
        print(f"cpu cores: {os.cpu_count()}  tokenizer: {model_dir}")

        lat = bench_latency(work, model_dir, args.latency_runs)
        ls = lat["latency_s"]
        print(f"\n[1] drop -> queued, inotify, {lat['size_mb']:.1f} MB file, {len(ls)} runs")
        print(f"    latency after close: median {statistics.median(ls):.3f} s, max {max(ls):.3f} s  (goal <= 2 s)")
        print(f"    baseline, reading the file once: median {statistics.median(lat['read_floor_s']):.3f} s")

        q = bench_quick(work, model_dir, args.lines)
        mbps, base_mbps = q["size_mb"] / q["quick_s"], q["size_mb"] / q["json_loads_s"]
        print(f"\n[2] QUICK on {q['lines']} lines ({q['size_mb']:.1f} MB)")
        print(f"    QUICK: {q['quick_s']:.2f} s = {mbps:.1f} MB/s, {q['lines'] / q['quick_s']:.0f} lines/s")
        print(f"    baseline json.loads per line: {base_mbps:.1f} MB/s  -> QUICK/baseline = {mbps / base_mbps:.2f}")

        s = bench_standard(work, model_dir, args.standard_rows, args.batch)
        std_eps, raw_eps = s["rows"] / s["standard_s"], s["rows"] / s["raw_s"]
        print(f"\n[3] STANDARD on {s['rows']} chat examples ({s['tokens']} tokens), batch {args.batch}")
        print(f"    STANDARD: {std_eps:.0f} examples/s;  raw batched tokenization: {raw_eps:.0f} examples/s")
        print(f"    ratio STANDARD/raw = {std_eps / raw_eps:.2f}  (goal >= 0.8)")
        print(f"    time inside trainer.data.encode_examples: {s['encoder_share']:.0%} of STANDARD "
              f"(the validator's own reading, statistics and checks: {1 - s['encoder_share']:.0%})")
        if args.write_docs:
            run.write_docs(
                f"Ingest (tokenizer of {model_dir.name if args.model else args.preset + ' preset'})",
                ["what", "Cadence", "baseline in the same run", "ratio"],
                [[f"drop -> queued, inotify, {lat['size_mb']:.1f} MB, median of {len(ls)} (max)",
                  f"{statistics.median(ls):.3f} s ({max(ls):.3f} s)",
                  f"read the file once: {statistics.median(lat['read_floor_s']):.3f} s", "goal <= 2 s"],
                 [f"QUICK, {q['lines']} lines ({q['size_mb']:.1f} MB)", f"{mbps:.1f} MB/s",
                  f"json.loads per line: {base_mbps:.1f} MB/s", f"{mbps / base_mbps:.2f}"],
                 [f"STANDARD, {s['rows']} chat examples, batch {args.batch}", f"{std_eps:.0f} examples/s",
                  f"raw batched tokenization: {raw_eps:.0f} examples/s", f"{std_eps / raw_eps:.2f} (goal >= 0.8)"]],
                [f"Time inside trainer.data.encode_examples: {s['encoder_share']:.0%} of STANDARD."])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
