"""vLLM standby strategies, measured in one run: a fresh server per version against a warm standby reloaded in place.

Cadence's swap on inference.engine = "vllm" starts a fresh vLLM server for each
new version (verify the folder, start, /health, smoke), flips, and stops the old
server once its requests end. The alternative the issue asks about keeps a
second, idle server resident and loads each new version into it with vLLM's own
in-place weight reload (`POST /collective_rpc {"method": "reload_weights"}`,
served only with VLLM_SERVER_DEV_MODE=1), kept afterwards as the rollback
target. This script measures both on the same two models, under the same
client load on the active server:

  fresh    load_vllm_version(B): verify + start + /health + schema + smoke (what a swap costs today)
  warm     one-time: start a standby server on A (dev mode); per version: reload_weights(B) + reset_prefix_cache
           + the same smoke, then the rollback reload_weights(A)

and checks that the reloaded server answers exactly as a fresh server of the
same weights does (greedy tokens and logprobs of a fixed prompt), and how much
memory each strategy holds between swaps.

Run as:
    python benchmarks/vllm_reload.py [--streams 4] [--write-docs]
"""
from __future__ import annotations

import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/vllm_reload.py`: the repo root, not benchmarks/

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.deploy import Load
from benchmarks.report import BenchmarkRun

PROBE = {"prompt": "The number one plus one is", "max_tokens": 16, "temperature": 0, "logprobs": 1}


def probe(served) -> tuple[list[str], list[float]]:
    """Greedy tokens and their logprobs for the fixed prompt."""
    r = httpx.post(served.base_url + "/v1/completions", json={"model": served.served_id, **PROBE}, timeout=300)
    r.raise_for_status()
    lp = r.json()["choices"][0]["logprobs"]
    return lp["tokens"], lp["token_logprobs"]


def same(a, b, tol: float = 1e-4) -> bool:
    return a[0] == b[0] and all(abs(x - y) <= tol for x, y in zip(a[1], b[1]))


def difference(a, b) -> str:
    """How two probe answers differ: the first differing token, and the largest logprob gap over the shared prefix."""
    n = next((i for i, (x, y) in enumerate(zip(a[0], b[0])) if x != y), None)
    k = len(a[0]) if n is None else n
    gap = max((abs(x - y) for x, y in zip(a[1][:k + 1], b[1][:k + 1])), default=0.0)
    return (f"same {len(a[0])} tokens" if n is None and len(a[0]) == len(b[0]) else f"tokens differ from #{k}") + \
        f", max |logprob gap| {gap:.2g}"


def reload_in_place(served, weights: Path, cfg) -> dict:
    """vLLM's in-place reload of `weights` into `served`, then the prefix cache dropped and Cadence's smoke request."""
    t0 = time.monotonic()
    r = httpx.post(served.base_url + "/collective_rpc", timeout=cfg.inference.vllm_start_timeout,
                   json={"method": "reload_weights", "kwargs": {"weights_path": str(weights)}})
    if r.status_code != 200:
        raise RuntimeError(f"reload_weights answered {r.status_code}: {r.text[:500]}")
    t_reload = time.monotonic() - t0
    httpx.post(served.base_url + "/reset_prefix_cache", timeout=60).raise_for_status()
    served.smoke()
    return {"reload_s": t_reload, "total_s": time.monotonic() - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fresh vLLM server per version vs a warm standby reloaded in place.")
    parser.add_argument("--streams", type=int, default=4, help="client streams on the active server during each swap")
    parser.add_argument("--preset", default="tiny", help="scripts/make_tiny_model.py preset of the two versions")
    parser.add_argument("--write-docs", action="store_true", help="write the result table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    run = BenchmarkRun.start("vllm_reload", argv=None if argv is None else [__file__, *argv])

    from core.config import from_dict
    from inference.vllm_engine import load_vllm_version, vllm_python
    from scripts.make_tiny_model import build_model

    work = Path(tempfile.mkdtemp(prefix="cadence-vllm-reload-"))
    model_a, model_b = work / "a", work / "b"
    build_model(model_a, preset=args.preset, seed=0)
    build_model(model_b, preset=args.preset, seed=1)  # same architecture and tokenizer, other weights
    cfg = from_dict({"paths": {"base_dir": str(work / "base")}, "model": {"base_model": str(model_a)},
                     "inference": {"engine": "vllm",
                                   "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0",
                                                "VLLM_SERVER_DEV_MODE": "1"}}}, work)
    cfg.layout.ensure()
    if not vllm_python(cfg).exists():
        print(f"{vllm_python(cfg)} missing: run scripts/setup.sh --vllm")
        return 2
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; {args.streams} client streams "
          "on the active server during every swap")
    servers = []
    try:
        active, rep = load_vllm_version(model_a, "a", cfg, require_manifest=False)
        servers.append(active)
        ref_a = probe(active)
        print(f"active server (A) up in {rep['load_seconds']:.1f}s idle, {rep['engine_rss_mb']:.0f} MB")
        load = Load(active.base_url, active.served_id, args.streams, max_tokens=32).start()
        try:
            fresh, fresh_rep = load_vllm_version(model_b, "b", cfg, require_manifest=False)
            servers.append(fresh)
            ref_b = probe(fresh)
            fresh_rss = fresh.rss_bytes() / 2**20
            print(f"fresh: new server for B ready in {fresh_rep['load_seconds']:.1f}s (start {fresh_rep['engine_start_seconds']:.1f}s, "
                  f"verify {fresh_rep['verify_seconds']:.1f}s), {fresh_rss:.0f} MB")
            fresh.stop()
            servers.remove(fresh)

            warm, warm_rep = load_vllm_version(model_a, "standby", cfg, require_manifest=False)
            servers.append(warm)
            warm_rss0 = warm.rss_bytes() / 2**20
            print(f"warm: standby server (A weights, dev mode) started once in {warm_rep['load_seconds']:.1f}s, {warm_rss0:.0f} MB")
            to_b = reload_in_place(warm, model_b, cfg)
            got_b = probe(warm)
            back = reload_in_place(warm, model_a, cfg)
            got_a = probe(warm)
            warm_rss1 = warm.rss_bytes() / 2**20
            print(f"warm: reload B {to_b['reload_s']:.2f}s (+ cache reset + smoke: {to_b['total_s']:.2f}s), answers as a "
                  f"fresh B server: {same(got_b, ref_b)}; rollback reload A {back['total_s']:.2f}s, answers as A: "
                  f"{same(got_a, ref_a)}; RSS {warm_rss0:.0f} -> {warm_rss1:.0f} MB")
            print(f"warm vs fresh B: {difference(got_b, ref_b)}; rollback vs A: {difference(got_a, ref_a)}; "
                  f"reloaded B vs A: {difference(got_b, ref_a)}")
        finally:
            load.finish()
        load_note = f"{load.ok} client requests during the swaps, {load.failed} failed"
        print(load_note)
        ratio = fresh_rep["load_seconds"] / max(to_b["total_s"], 1e-9)
        print(f"fresh / warm time per version: {ratio:.0f}x; memory between swaps: one server "
              f"({rep['engine_rss_mb']:.0f} MB) vs two ({rep['engine_rss_mb'] + warm_rss1:.0f} MB)")
        result = {"fresh_s": fresh_rep["load_seconds"], "fresh_start_s": fresh_rep["engine_start_seconds"],
                  "fresh_rss_mb": fresh_rss, "warm_once_s": warm_rep["load_seconds"], "warm_reload_s": to_b["reload_s"],
                  "warm_total_s": to_b["total_s"], "rollback_s": back["total_s"], "equal_b": same(got_b, ref_b),
                  "equal_a": same(got_a, ref_a), "diff_b": difference(got_b, ref_b), "warm_rss_mb": warm_rss1, "active_rss_mb": rep["engine_rss_mb"],
                  "requests_ok": load.ok, "requests_failed": load.failed}
        (work / "result.json").write_text(json.dumps(result, indent=2))
    finally:
        for s in servers:
            s.stop()
    if args.write_docs:
        r = result
        rows = [["fresh server per version (Cadence's swap)", f"{r['fresh_s']:.1f} s (vLLM start {r['fresh_start_s']:.1f} s)",
                 "no reload: the old server is stopped once drained", f"{r['active_rss_mb']:.0f} MB (one server); "
                 f"two ({r['active_rss_mb'] + r['fresh_rss_mb']:.0f} MB) only during a swap", "yes (it is B)"],
                ["warm standby reloaded in place (vLLM reload_weights)", f"{r['warm_total_s']:.2f} s "
                 f"(reload {r['warm_reload_s']:.2f} s + cache reset + smoke); standby started once in {r['warm_once_s']:.1f} s",
                 f"{r['rollback_s']:.2f} s", f"{r['active_rss_mb'] + r['warm_rss_mb']:.0f} MB (two servers) all the time",
                 f"B: {'yes' if r['equal_b'] else 'NO (' + r['diff_b'] + ')'}, A after rollback: {'yes' if r['equal_a'] else 'NO'}"]]
        run.write_docs("vLLM standby: fresh server per version vs a warm standby reloaded in place (tiny model, CPU)",
                       ["strategy", "new version ready", "rollback", "resident memory", "answers as a fresh server"],
                       rows, [f"{args.streams} client streams on the active server during every swap: {load_note}."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
