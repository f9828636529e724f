"""Serving benchmark, vLLM-bench style: Cadence's inference server vs `transformers serve` and vLLM, same model, same run.

For each backend (Cadence's builtin engine; `transformers serve`; `transformers
serve --continuous-batching`; `vllm`, vLLM's own OpenAI server from the vLLM
venv; `cadence+vllm`, Cadence's front with inference.engine=vllm over that same
server, whose overhead over `vllm` is printed) it starts the server as a subprocess on loopback,
warms it up, then sends streaming chat requests from a closed loop of C
concurrent clients (C = 1, 8, 32 by default) and reports TTFT, TPOT, ITL and
end-to-end latency percentiles, request/s and output tokens/s, plus the
ratio of Cadence's output tok/s and TTFT p99 to the best peer at each
concurrency. Every request generates exactly --max-tokens tokens (Cadence:
`ignore_eos`; transformers: a generation_config without an end token), so
throughput compares like with like. Output token counts come from each
server's `usage`. Every server gets the same OMP/MKL thread count; the whole
comparison runs once per --threads value (default: 1, then the library
default), because on a small shared CPU box the peers react very differently
to intra-op threading. A level stops starting new requests after
--max-level-seconds (slow peers); the requests that ran are what is reported.

Finally it measures Cadence's TTFT p99 while new model versions are being
deployed back to back (POST /admin/models/load) against the steady state.
Before the comparison it measures TTFT p99 of a steady stream while 5 MB
chat requests arrive back to back (--big-request-mb; at the default body
limit and under one that admits them) against the same stream alone, with the
server's RSS (issue 14; goal: no more than 2x).

Run as:
    python benchmarks/serve.py                                  # tiny model built in a temp dir
    python benchmarks/serve.py --model models/base --concurrency 1 8 32 --max-tokens 64
    python benchmarks/serve.py --backends cadence --json out.json
    python benchmarks/serve.py --big-request-only --threads 0         # only the big-request line
    python benchmarks/serve.py --backends cadence vllm cadence+vllm --threads 0 --swap-versions 0   # engines + front overhead
    python benchmarks/serve.py --front-overhead 3      # the front vs its own vLLM server, alternating, same run
    python benchmarks/serve.py --front-overhead 3 --write-docs   # ... and put its table into docs/benchmarks.md

With --write-docs the comparison table goes to docs/benchmarks.md's `serve`
region and the front-overhead table to its `serve_front_overhead` region,
each with the command, date, host, load and commit that produced it.
"""
from __future__ import annotations

import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/serve.py`: the repo root, not benchmarks/

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import httpx

from benchmarks.report import BenchmarkRun, markdown_table

PROMPT = ("You are a careful assistant. Explain, step by step, how to add two binary numbers such as "
          "1011 and 0110, and say what the carry bit does in each column.")
ADMIN_TOKEN = "bench-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# ---- backends --------------------------------------------------------------------------------------
class Backend:
    name = "?"

    def __init__(self, model: Path, workdir: Path, max_batch: int, threads: int | None = None):
        self.model, self.workdir, self.max_batch, self.threads = model, workdir, max_batch, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def body(self, max_tokens: int) -> dict:
        raise NotImplementedError

    start_timeout = 180.0

    def env(self) -> dict:
        return {}

    def start(self, timeout: float | None = None) -> None:
        timeout = timeout or self.start_timeout
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO), **self.env()}
        if self.threads:  # the same intra-op thread count for every backend
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        self.proc = subprocess.Popen(self.command(), stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     cwd=REPO, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log}")
            try:
                probe = {**self.body(2), "stream": False}
                probe.pop("stream_options", None)  # vLLM refuses stream_options without stream
                r = httpx.post(self.url + "/v1/chat/completions", json=probe, timeout=30)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout}s: see {self.log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Cadence(Backend):
    name = "cadence"

    def command(self):
        base = self.workdir / "cadence-base"
        (base / "control").mkdir(parents=True, exist_ok=True)
        (base / "control" / "admin.token").write_text(ADMIN_TOKEN)
        cfg = {"paths": {"base_dir": str(base)}, "model": {"base_model": str(self.model)}, "inference": self.config()}
        (base / "config.json").write_text(json.dumps(cfg))
        return [sys.executable, "-m", "inference", "--config", str(base / "config.json"), "--log-level", "warning"]

    def config(self) -> dict:
        return {"port": self.port, "max_batch_size": self.max_batch, "max_queue": 1024}

    def body(self, max_tokens):
        return {"model": "cadence-tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
                "temperature": 0.7, "top_p": 0.9, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}


VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


class VllmDirect(Backend):
    """vLLM's own OpenAI server (the vLLM venv, scripts/setup.sh --vllm) with the flags Cadence starts it with."""
    name = "vllm"
    start_timeout = 900

    def command(self):
        from core.config import VLLM_DEFAULT_ARGS

        if not VLLM_PYTHON.exists():
            raise RuntimeError(f"{VLLM_PYTHON} missing: run scripts/setup.sh --vllm")
        return [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", "cadence-tiny",
                "--dtype", "float32", "--max-num-seqs", str(self.max_batch), *VLLM_DEFAULT_ARGS]

    def env(self):
        from inference.vllm_engine import cpu_thread_env

        # The placement Cadence gives each version's server (unpinned, auto's thread count), so the two compare.
        return {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", **cpu_thread_env({})}

    body = Cadence.body


class CadenceVllm(Cadence):
    """Cadence's front with inference.engine = "vllm": the same vLLM server behind the version-pinning proxy."""
    name = "cadence+vllm"
    start_timeout = 900

    def config(self):
        if not VLLM_PYTHON.exists():
            raise RuntimeError(f"{VLLM_PYTHON} missing: run scripts/setup.sh --vllm")
        return {"port": self.port, "max_batch_size": self.max_batch, "engine": "vllm", "vllm_python": str(VLLM_PYTHON)}


class TransformersServe(Backend):
    name = "transformers serve"
    cb = False

    def command(self):
        exe = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
        cmd = [exe, "serve", str(self.model), "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
               "--log-level", "warning"]
        return cmd + (["--continuous-batching"] if self.cb else [])

    def body(self, max_tokens):
        # A generation_config without eos_token_id: exactly max_tokens tokens, like Cadence's ignore_eos.
        gen = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": max_tokens}
        return {"model": str(self.model), "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
                "temperature": 0.7, "top_p": 0.9, "stream": True, "generation_config": json.dumps(gen),
                "stream_options": {"include_usage": True}}


class TransformersServeCB(TransformersServe):
    name = "transformers serve --continuous-batching"
    cb = True


# ---- load generation ----------------------------------------------------------------------------------
async def one_request(client: httpx.AsyncClient, backend: Backend, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    arrivals, usage, error, version = [], None, None, None
    try:
        async with client.stream("POST", backend.url + "/v1/chat/completions", json=backend.body(max_tokens)) as r:
            version = r.headers.get("x-model-version")
            if r.status_code != 200:
                error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    obj = json.loads(line[6:])
                    if "error" in obj:
                        error = str(obj["error"])[:200]
                        break
                    if obj.get("usage"):
                        usage = obj["usage"]
                    for ch in obj.get("choices") or []:
                        if (ch.get("delta") or {}).get("content"):
                            arrivals.append(time.perf_counter())
    except httpx.HTTPError as exc:
        error = repr(exc)
    end = time.perf_counter()
    tokens = (usage or {}).get("completion_tokens") or len(arrivals)
    return {"start": t0, "end": end, "ttft": (arrivals[0] - t0) if arrivals else None, "e2e": end - t0,
            "itl": [b - a for a, b in zip(arrivals, arrivals[1:])], "tokens": tokens, "error": error,
            "version": version}


async def run_level(backend: Backend, concurrency: int, n_requests: int, max_tokens: int,
                    stop_when: threading.Event | None = None, max_seconds: float | None = None) -> tuple[list[dict], float]:
    """Closed loop: `concurrency` clients send back-to-back requests until n_requests were sent, `stop_when` is set,
    or `max_seconds` passed (no new request starts after it; running ones finish and count)."""
    results: list[dict] = []
    remaining = [n_requests]
    deadline = time.perf_counter() + max_seconds if max_seconds else None

    async def worker(client):
        while ((stop_when is None and remaining[0] > 0) or (stop_when is not None and not stop_when.is_set())) \
                and (deadline is None or time.perf_counter() < deadline):
            remaining[0] -= 1
            results.append(await one_request(client, backend, max_tokens))

    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        duration = time.perf_counter() - t0
    return results, duration


def summarize(results: list[dict], duration: float) -> dict:
    ok = [r for r in results if not r["error"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    tpot = [(r["e2e"] - r["ttft"]) / (r["tokens"] - 1) for r in ok if r["ttft"] is not None and r["tokens"] > 1]
    itl = [x for r in ok for x in r["itl"]]
    e2e = [r["e2e"] for r in ok]
    out = {"requests": len(results), "failed": len(results) - len(ok), "duration_s": duration,
           "req_per_s": len(ok) / duration if duration else 0.0,
           "output_tok_per_s": sum(r["tokens"] for r in ok) / duration if duration else 0.0,
           "mean_output_tokens": statistics.mean([r["tokens"] for r in ok]) if ok else 0}
    for name, vals in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)):
        out[f"{name}_mean_ms"] = 1000 * statistics.mean(vals) if vals else float("nan")
        for p in (50, 90, 99):
            out[f"{name}_p{p}_ms"] = 1000 * pct(vals, p)
    errors = sorted({r["error"] for r in results if r["error"]})
    if errors:
        out["errors"] = errors[:3]
    return out


def bench_backend(backend: Backend, levels: list[int], per_level, max_tokens: int, max_seconds: float | None) -> dict:
    backend.start()
    try:
        asyncio.run(run_level(backend, 2, 4, max_tokens))  # warm-up
        rows = {}
        for c in levels:
            results, duration = asyncio.run(run_level(backend, c, per_level(c), max_tokens, max_seconds=max_seconds))
            rows[c] = summarize(results, duration)
            print(f"  {backend.name:42s} c={c:<3d} {rows[c]['output_tok_per_s']:8.1f} tok/s  "
                  f"ttft p99 {rows[c]['ttft_p99_ms']:8.1f} ms  failed {rows[c]['failed']}", flush=True)
            if rows[c]["failed"] and backend.proc.poll() is not None:
                rows[c]["server_exit"] = backend.proc.returncode
                rows[c]["server_log_tail"] = backend.log.read_text(errors="replace")[-1500:]
                print(f"  {backend.name} exited with {backend.proc.returncode}; log tail:\n"
                      f"{rows[c]['server_log_tail']}", flush=True)
        return rows
    finally:
        backend.stop()


def bench_swap(model: Path, workdir: Path, concurrency: int, max_tokens: int, n_versions: int, seconds: float,
               interval: float = 1.0, threads: int | None = None) -> dict:
    """Cadence TTFT during back-to-back deploys vs steady state, same load."""
    import torch
    from safetensors.torch import load_file, save_file

    from core.manifest import write_manifest

    def perturb_weights(folder: Path, seed: int) -> None:
        tensors = load_file(folder / "model.safetensors")
        g = torch.Generator().manual_seed(seed)
        for name, t in tensors.items():
            if t.is_floating_point():
                tensors[name] = t + 0.02 * torch.randn(t.shape, generator=g, dtype=t.dtype)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    versions = []
    for i in range(n_versions):
        dst = workdir / f"swap-v{i:02d}"
        shutil.copytree(model, dst)
        perturb_weights(dst, seed=i)
        write_manifest(dst, model_only=True, version=f"swap-v{i:02d}", global_step=i)
        versions.append(dst)
    backend = Cadence(model, workdir, 32, threads)
    backend.start()
    try:
        asyncio.run(run_level(backend, 2, 4, max_tokens))
        steady_stop = threading.Event()
        threading.Timer(seconds, steady_stop.set).start()
        steady, d1 = asyncio.run(run_level(backend, concurrency, 0, max_tokens, stop_when=steady_stop))
        swap_stop = threading.Event()
        loads = []

        def deploy():
            for path in versions:
                time.sleep(interval)  # keep serving between deploys: the phase measures requests that overlap swaps
                t0 = time.perf_counter()
                r = httpx.post(backend.url + "/admin/models/load", json={"path": str(path)}, timeout=300,
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                loads.append({"status": r.status_code, "seconds": time.perf_counter() - t0,
                              "version": r.json().get("version")})
            time.sleep(interval)
            swap_stop.set()

        deployer = threading.Thread(target=deploy)
        deployer.start()
        during, d2 = asyncio.run(run_level(backend, concurrency, 0, max_tokens, stop_when=swap_stop))
        deployer.join()
    finally:
        backend.stop()
    s, w = summarize(steady, d1), summarize(during, d2)
    return {"concurrency": concurrency, "steady": s, "during_swap": w, "loads": loads,
            "versions_seen": sorted({r["version"] for r in during if r["version"]}),
            "ttft_p99_ratio": w["ttft_p99_ms"] / s["ttft_p99_ms"] if s["ttft_p99_ms"] else float("nan")}


# ---- a big request under a steady stream (issue 14) ----------------------------------------------------
class CadenceBodyLimit(Cadence):
    """Cadence with inference.max_body_bytes set (None: the server's default)."""

    def __init__(self, *args, max_body_bytes: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_body_bytes = max_body_bytes

    def command(self):
        cmd = super().command()
        if self.max_body_bytes:
            path = self.workdir / "cadence-base" / "config.json"
            cfg = json.loads(path.read_text())
            cfg["inference"]["max_body_bytes"] = self.max_body_bytes
            path.write_text(json.dumps(cfg))
        return cmd


def bench_big_request(model: Path, workdir: Path, concurrency: int, max_tokens: int, seconds: float, big_mb: float,
                      threads: int | None = None) -> list[dict]:
    """TTFT p99 of a steady stream while `big_mb` MB chat requests arrive back to back vs the same stream alone;
    once at the server's default body limit (the request is refused 413 while it streams in) and once under a
    limit that admits it (parsed, then refused by its length before any tokenising)."""
    import psutil

    size = int(big_mb * (1 << 20))
    words = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    big = json.dumps({"model": "cadence-tiny", "messages": [{"role": "user", "content": words}],
                      "max_tokens": 8}).encode()
    out = []
    for label, limit in (("default limit", None), (f"limit {2 * big_mb:g} MB", 2 * size)):
        backend = CadenceBodyLimit(model, workdir / f"big-{limit or 'default'}", 32, threads, max_body_bytes=limit)
        backend.workdir.mkdir(parents=True, exist_ok=True)
        try:
            backend.start()  # inside the try: a server that never gets ready is stopped too
            asyncio.run(run_level(backend, 2, 4, max_tokens))
            stop = threading.Event()
            threading.Timer(seconds, stop.set).start()
            steady, d1 = asyncio.run(run_level(backend, concurrency, 0, max_tokens, stop_when=stop))
            rss0 = psutil.Process(backend.proc.pid).memory_info().rss
            stop, bigs, peak = threading.Event(), [], [rss0]

            def send_big():
                with httpx.Client(timeout=300) as client:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        try:
                            r = client.post(backend.url + "/v1/chat/completions", content=big,
                                            headers={"Content-Type": "application/json"})
                            status = r.status_code
                        except httpx.HTTPError as exc:  # the server closed after its 413 while we were still sending
                            status = type(exc).__name__
                        bigs.append({"status": status, "seconds": time.perf_counter() - t0})
                        peak.append(psutil.Process(backend.proc.pid).memory_info().rss)

            threading.Timer(seconds, stop.set).start()
            sender = threading.Thread(target=send_big)
            sender.start()
            during, d2 = asyncio.run(run_level(backend, concurrency, 0, max_tokens, stop_when=stop))
            sender.join()
            rss1 = psutil.Process(backend.proc.pid).memory_info().rss
        finally:
            backend.stop()
        st, du = summarize(steady, d1), summarize(during, d2)
        statuses: dict = {}
        for b in bigs:
            statuses[str(b["status"])] = statuses.get(str(b["status"]), 0) + 1
        out.append({"phase": label, "steady": st, "during_big": du, "big_requests": statuses,
                    "big_seconds_p50": pct([b["seconds"] for b in bigs], 50),
                    "rss_start_mb": rss0 / 2 ** 20, "rss_peak_mb": max(peak) / 2 ** 20, "rss_end_mb": rss1 / 2 ** 20,
                    "ttft_p99_ratio": du["ttft_p99_ms"] / st["ttft_p99_ms"] if st["ttft_p99_ms"] else float("nan")})
    return out


def print_big_request(rows: list[dict], big_mb: float, concurrency: int) -> None:
    print(f"\nA {big_mb:g} MB request arriving back to back under a steady stream (Cadence, c={concurrency}; goal: "
          "TTFT p99 no more than 2x steady):")
    print("| server | steady TTFT p99 ms | with big requests | ratio | big requests (status: n) | big p50 s | "
          "RSS start / peak / end MB | failed streams |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, d = r["steady"], r["during_big"]
        print(f"| {r['phase']} | {s['ttft_p99_ms']:.1f} | {d['ttft_p99_ms']:.1f} | {r['ttft_p99_ratio']:.2f}x | "
              f"{r['big_requests']} | {r['big_seconds_p50']:.3f} | {r['rss_start_mb']:.0f} / {r['rss_peak_mb']:.0f} / "
              f"{r['rss_end_mb']:.0f} | {s['failed'] + d['failed']} |")
    print(f"TTFT p99 while {big_mb:g} MB requests arrive / steady: "
          + ", ".join(f"{r['phase']}: {r['ttft_p99_ratio']:.2f}x" for r in rows), flush=True)


# ---- report ----------------------------------------------------------------------------------------
def print_table(results: dict, levels: list[int]) -> None:
    cols = ["c", "backend", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "ITL p50",
            "ITL p99", "E2E p50", "E2E p99", "failed"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for c in levels:
        for name, rows in results.items():
            if isinstance(rows, str):
                continue
            r = rows[c]
            print(f"| {c} | {name} | {r['req_per_s']:.2f} | {r['output_tok_per_s']:.1f} | {r['ttft_p50_ms']:.1f} | "
                  f"{r['ttft_p99_ms']:.1f} | {r['tpot_p50_ms']:.2f} | {r['tpot_p99_ms']:.2f} | {r['itl_p50_ms']:.2f} | "
                  f"{r['itl_p99_ms']:.2f} | {r['e2e_p50_ms']:.0f} | {r['e2e_p99_ms']:.0f} | {r['failed']} |")
    print("(latencies in ms)")
    peers = {k: v for k, v in results.items() if not k.startswith("cadence") and not isinstance(v, str)}
    for name, why in results.items():
        if isinstance(why, str):
            print(f"\n{name}: not measured: {why}")
    if "cadence" in results and peers:
        print("\n| c | best peer (out tok/s) | Cadence / best peer out tok/s | Cadence TTFT p99 / best peer TTFT p99 |")
        print("|---|---|---|---|")
        for c in levels:
            best_name, best = max(peers.items(), key=lambda kv: kv[1][c]["output_tok_per_s"])
            cad = results["cadence"][c]
            best_ttft = min(v[c]["ttft_p99_ms"] for v in peers.values())
            print(f"| {c} | {best_name} ({best[c]['output_tok_per_s']:.1f}) | "
                  f"{cad['output_tok_per_s'] / best[c]['output_tok_per_s']:.2f}x | {cad['ttft_p99_ms'] / best_ttft:.2f}x |")


def print_front_overhead(results: dict, levels: list[int]) -> None:
    """cadence+vllm against vllm direct, same run: what the version-pinning proxy costs (goal <= 5 % tok/s, <= 5 ms TTFT)."""
    direct, front = results.get("vllm"), results.get("cadence+vllm")
    if not isinstance(direct, dict) or not isinstance(front, dict):
        return
    print("\n| c | vllm out tok/s | cadence+vllm out tok/s | tok/s overhead | TTFT p50 +ms | TTFT p99 +ms |")
    print("|---|---|---|---|---|---|")
    for c in levels:
        d, f = direct[c], front[c]
        print(f"| {c} | {d['output_tok_per_s']:.1f} | {f['output_tok_per_s']:.1f} | "
              f"{100 * (1 - f['output_tok_per_s'] / d['output_tok_per_s']):+.1f} % | "
              f"{f['ttft_p50_ms'] - d['ttft_p50_ms']:+.1f} | {f['ttft_p99_ms'] - d['ttft_p99_ms']:+.1f} |")


class SameServer(Backend):
    """An already running server at `url` (not started or stopped here), sent the same requests as `like`."""

    def __init__(self, name: str, url: str, like: Backend):
        self.name, self.url, self.like, self.proc = name, url, like, None

    def body(self, max_tokens):
        return self.like.body(max_tokens)


def bench_front_overhead(model: Path, workdir: Path, levels: list[int], per_level, max_tokens: int, rounds: int,
                         max_seconds: float | None) -> dict:
    """The front's cost with no other difference: one cadence+vllm front, and its own vLLM server hit directly,
    level by level in alternating order for `rounds` rounds (a loaded box drifts; medians over rounds)."""
    import psutil

    front = CadenceVllm(model, workdir, max(levels))
    front.start()
    try:
        front_proc = psutil.Process(front.proc.pid)
        server = next(p for p in front_proc.children() if "vllm.entrypoints" in " ".join(p.cmdline()))
        cmd = server.cmdline()
        direct = SameServer("vllm (the front's own server)", f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}", front)
        asyncio.run(run_level(direct, 2, 4, max_tokens))
        asyncio.run(run_level(front, 2, 4, max_tokens))
        runs: dict = {c: {"direct": [], "front": []} for c in levels}
        for r in range(rounds):
            for c in levels:
                order = [("direct", direct), ("front", front)]
                for key, target in (order if r % 2 == 0 else order[::-1]):
                    cpu0 = sum(front_proc.cpu_times()[:2])
                    results, duration = asyncio.run(run_level(target, c, per_level(c), max_tokens, max_seconds=max_seconds))
                    runs[c][key].append(summarize(results, duration))
                    if key == "front":  # the front process's own CPU (its vLLM server is a child, not counted)
                        cpu = sum(front_proc.cpu_times()[:2]) - cpu0
                        tokens = runs[c][key][-1]["output_tok_per_s"] * duration
                        runs[c][key][-1].update(front_cpu_us_per_token=1e6 * cpu / tokens if tokens else float("nan"),
                                                front_core_share=cpu / duration if duration else float("nan"))
                    if runs[c][key][-1]["failed"]:
                        print(f"  {key} c={c}: {runs[c][key][-1]['failed']} failed: {runs[c][key][-1]['errors']}", flush=True)
            print(f"  front-overhead round {r + 1}/{rounds} done; load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        front.stop()
    out = {}
    for c in levels:
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("output_tok_per_s", "ttft_p50_ms", "ttft_p99_ms")}
               for k, v in runs[c].items()}
        out[c] = {**med, "failed": sum(x["failed"] for v in runs[c].values() for x in v),
                  "front_cpu_us_per_token": statistics.median(x["front_cpu_us_per_token"] for x in runs[c]["front"]),
                  "front_core_share": statistics.median(x["front_core_share"] for x in runs[c]["front"]),
                  "tok_s_overhead_pct": 100 * (1 - med["front"]["output_tok_per_s"] / med["direct"]["output_tok_per_s"]),
                  "ttft_p50_added_ms": med["front"]["ttft_p50_ms"] - med["direct"]["ttft_p50_ms"],
                  "ttft_p99_added_ms": med["front"]["ttft_p99_ms"] - med["direct"]["ttft_p99_ms"],
                  "rounds": runs[c]}
    print(f"\nFront overhead, same vLLM server, medians of {rounds} alternating rounds (goal <= 5 % tok/s, <= 5 ms TTFT):")
    print(markdown_table(FRONT_OVERHEAD_HEADERS, front_overhead_rows(out)), flush=True)
    return out


FRONT_OVERHEAD_HEADERS = ["c", "direct out tok/s", "via front out tok/s", "tok/s overhead", "TTFT p50 direct / +ms",
                          "TTFT p99 direct / +ms", "front CPU µs per token", "front CPU, share of a core", "failed"]


def front_overhead_rows(out: dict) -> list[list]:
    """One row per concurrency of bench_front_overhead's result: printed and written to the docs alike."""
    return [[c, f"{r['direct']['output_tok_per_s']:.1f}", f"{r['front']['output_tok_per_s']:.1f}",
             f"{r['tok_s_overhead_pct']:+.1f} %", f"{r['direct']['ttft_p50_ms']:.1f} / {r['ttft_p50_added_ms']:+.1f}",
             f"{r['direct']['ttft_p99_ms']:.1f} / {r['ttft_p99_added_ms']:+.1f}", f"{r['front_cpu_us_per_token']:.0f}",
             f"{100 * r['front_core_share']:.0f} %", r["failed"]] for c, r in out.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF model folder (default: build the tiny preset in a temp dir)")
    parser.add_argument("--preset", default="tiny", help="make_tiny_model preset when --model is not given")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default: max(32, 4*c))")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=["cadence", "transformers", "transformers-cb"],
                        choices=["cadence", "transformers", "transformers-cb", "vllm", "cadence+vllm"])
    parser.add_argument("--swap-versions", type=int, default=6, help="versions deployed in the swap test (0 = skip)")
    parser.add_argument("--swap-concurrency", type=int, default=8)
    parser.add_argument("--steady-seconds", type=float, default=8.0)
    parser.add_argument("--swap-interval", type=float, default=1.0, help="seconds of serving between two deploys")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                        help="OMP/MKL threads for every server; one full comparison per value (default: 1, then 0 = the "
                             "library default)")
    parser.add_argument("--max-level-seconds", type=float, default=90.0,
                        help="stop starting new requests at a level after this long (slow peers); 0 = no cap")
    parser.add_argument("--json", default=None, help="also write all numbers to this file")
    parser.add_argument("--big-request-mb", type=float, default=5.0,
                        help="size of the big request sent under a steady stream (0 = skip that measurement)")
    parser.add_argument("--big-request-only", action="store_true",
                        help="run only the big-request measurement (no backend comparison, no swap)")
    parser.add_argument("--big-concurrency", type=int, default=8, help="streams of the big-request measurement")
    parser.add_argument("--front-overhead", type=int, default=0, metavar="ROUNDS",
                        help="only measure Cadence's front over its own vLLM server vs that server directly, in ROUNDS "
                             "alternating rounds (needs the vLLM venv)")
    parser.add_argument("--write-docs", action="store_true", help="write the result tables into docs/benchmarks.md")
    args = parser.parse_args(argv)
    run = BenchmarkRun.start("serve", argv=None if argv is None else [__file__, *argv])

    workdir = Path(tempfile.mkdtemp(prefix="cadence-bench-"))
    model = Path(args.model).resolve() if args.model else None
    if model is None:
        from scripts.make_tiny_model import build_model
        model = build_model(workdir / f"model-{args.preset}", preset=args.preset)
    per_level = (lambda c: args.requests) if args.requests else (lambda c: max(32, 4 * c))
    if args.front_overhead:
        print(f"## model {model.name}; {os.cpu_count()} CPUs; max_tokens {args.max_tokens}; load average before: "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        out = bench_front_overhead(model, workdir, args.concurrency, per_level, args.max_tokens, args.front_overhead,
                                   args.max_level_seconds or None)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        if args.write_docs:
            write_front_overhead_docs(run, out, args)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    classes = {"cadence": Cadence, "transformers": TransformersServe, "transformers-cb": TransformersServeCB,
               "vllm": VllmDirect, "cadence+vllm": CadenceVllm}
    everything: dict = {}
    for threads in args.threads:
        print(f"\n## model {model.name}; {os.cpu_count()} CPUs; max_tokens {args.max_tokens}; concurrency "
              f"{args.concurrency}; threads per server: {threads or 'library default'}; load average before: "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        results: dict = {}
        if args.big_request_mb and (args.big_request_only or "cadence" in args.backends):
            big = bench_big_request(model, workdir / f"big-t{threads}", args.big_concurrency, args.max_tokens,
                                    args.steady_seconds, args.big_request_mb, threads)
            print_big_request(big, args.big_request_mb, args.big_concurrency)
            everything[f"big_request threads={threads or 'default'}"] = big
        if args.big_request_only:
            continue
        for key in args.backends:
            backend = classes[key](model, workdir, max(args.concurrency), threads)
            try:
                results[backend.name] = bench_backend(backend, args.concurrency, per_level, args.max_tokens,
                                                      args.max_level_seconds or None)
            except Exception as exc:  # a peer that cannot run here is reported with the reason, not fatal
                tail = backend.log.read_text(errors="replace")[-600:] if backend.log.exists() else ""
                results[backend.name] = f"{type(exc).__name__}: {exc}\n{tail}"
                print(f"  {backend.name}: failed: {exc}", flush=True)
        print_table(results, args.concurrency)
        print_front_overhead(results, args.concurrency)
        swap = None
        if args.swap_versions and "cadence" in args.backends:
            swap = bench_swap(model, workdir / f"swap-t{threads}", args.swap_concurrency, args.max_tokens,
                              args.swap_versions, args.steady_seconds, args.swap_interval, threads)
            s, w = swap["steady"], swap["during_swap"]
            print(f"\nSwap under load (Cadence, c={swap['concurrency']}, {len(swap['loads'])} versions deployed, one "
                  f"every {args.swap_interval:g} s; load calls {[round(x['seconds'], 2) for x in swap['loads']]} s, "
                  f"statuses {[x['status'] for x in swap['loads']]}):")
            print("| phase | requests | failed | TTFT p50 | TTFT p99 | out tok/s |")
            print("|---|---|---|---|---|---|")
            for name, r in (("steady", s), ("during swaps", w)):
                print(f"| {name} | {r['requests']} | {r['failed']} | {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | "
                      f"{r['output_tok_per_s']:.1f} |")
            print(f"TTFT p99 during swap / steady: {swap['ttft_p99_ratio']:.2f}x; versions that served: "
                  f"{swap['versions_seen']}", flush=True)
        everything[f"threads={threads or 'default'}"] = {"results": results, "swap": swap}
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=2, default=str))
    if args.write_docs:
        write_comparison_docs(run, everything, args)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def write_front_overhead_docs(run: BenchmarkRun, out: dict, args) -> None:
    run.write_docs(f"Cadence's front over vLLM vs the same vLLM server direct (medians of {args.front_overhead} "
                   "alternating rounds; goal <= 5 % tok/s, <= 5 ms TTFT)",
                   FRONT_OVERHEAD_HEADERS, front_overhead_rows(out),
                   [f"max_tokens {args.max_tokens}; streamed chat; output tokens from each answer's usage.",
                    "Front CPU: the front process's own user + system CPU time during its level over the output tokens "
                    "it relayed (its vLLM server is a child process, not counted). On a box where the front has a core "
                    "of its own that CPU is its whole cost; on 2 cores it is taken from the engine, and the tok/s and "
                    "TTFT columns swing with the unpinned vLLM server's run-to-run variance (direct alone moved "
                    "1,066-1,384 tok/s at c=8 between runs of an hour)."],
                   section="serve_front_overhead")


def write_comparison_docs(run: BenchmarkRun, everything: dict, args) -> None:
    rows = []
    for key, value in everything.items():
        if not key.startswith("threads="):
            continue
        for name, per_level in value["results"].items():
            if not isinstance(per_level, dict):
                rows.append([key, name, "-", "failed: " + str(per_level).splitlines()[0][:120], "", "", ""])
                continue
            for c, r in per_level.items():
                rows.append([key, name, c, f"{r['output_tok_per_s']:.1f}", f"{r['ttft_p50_ms']:.1f}",
                             f"{r['ttft_p99_ms']:.1f}", r["failed"]])
    run.write_docs("Serving: output tok/s and TTFT per backend and concurrency, same model, same client, one run",
                   ["threads per server", "backend", "c", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "failed"], rows,
                   [f"max_tokens {args.max_tokens} (ignore_eos); streamed chat; output tokens from each answer's usage."])


if __name__ == "__main__":
    sys.exit(main())
