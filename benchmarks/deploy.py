"""Deploy benchmark: checkpoint saved -> served, with its breakdown, under request load.

For each model size it starts the inference server as a subprocess on
loopback (serving the base model as version "base"), keeps client threads
sending small chat requests the whole time, publishes a checkpoint the way the
trainer does (temp folder, manifest, rename), then runs the lifecycle path:

  detect   the lifecycle worker notices the new checkpoint (a listing every --poll s = comparison.watch_interval)
  score    the comparison engine loads it and scores --val-rows validation rows (+ --eval-samples per skill)
  version  consolidation into models/versions/ (hard links)
  copy     rsync of the model files into the target's staging folder
  verify   sha256 manifest of the staged copy, rename into place
  load     POST /admin/models/load: the server verifies the manifest again, loads, checks and smoke-tests
  flip     until /v1/models reports the new version
  health   the health window (deploy.health_window_seconds), then promotion

and reports saved -> served (flip done) and saved -> promoted, plus how many
requests failed during it (the goal is 0, and <= 30 s saved -> served for the
Qwen3-0.6B-sized model).

Run as:
    python benchmarks/deploy.py                                   # tiny and Qwen3-0.6B-sized (built in /tmp)
    python benchmarks/deploy.py --presets tiny --json out.json
    python benchmarks/deploy.py --presets qwen3-0.6b --model-dir /tmp/qwen3-0.6b-random
    python benchmarks/deploy.py --presets tiny --engine vllm                 # the same path onto vLLM
    python benchmarks/deploy.py --presets tiny --write-docs                  # and put the table into docs/benchmarks.md
"""
from __future__ import annotations

import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/deploy.py`: the repo root, not benchmarks/

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import httpx

from benchmarks.report import BenchmarkRun

ADMIN_TOKEN = "bench-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_val(path: Path, n: int) -> None:
    import random

    rng = random.Random(0)
    words = ("cat", "dog", "bird", "fish", "tree", "sun")
    with open(path, "w") as fh:
        for _ in range(n):
            q = " ".join(rng.choice(words) for _ in range(8))
            a = " ".join(rng.choice(words) for _ in range(4))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")


class Load:
    """Closed-loop clients; every request's outcome is kept (a failure is any non-200 or transport error)."""

    def __init__(self, url: str, model: str, clients: int, max_tokens: int):
        self.url, self.model, self.max_tokens = url, model, max_tokens
        self.stop = threading.Event()
        self.ok, self.failed, self.versions, self.errors = 0, 0, set(), []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        body = {"model": self.model, "messages": [{"role": "user", "content": "Tell me about binary numbers."}],
                "max_tokens": self.max_tokens, "ignore_eos": True}
        with httpx.Client(timeout=300) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url + "/v1/chat/completions", json=body)
                    if r.status_code == 200:
                        self.ok += 1
                        self.versions.add(r.headers.get("x-model-version"))
                    else:
                        self.failed += 1
                        self.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failed += 1
                    self.errors.append(repr(exc))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(600)


def servable_copy(model_dir: Path, out: Path) -> Path:
    """The model with a tokenizer the inference server accepts.

    The qwen3-0.6b preset keeps Qwen3's vocab_size (151,936) but its locally
    trained tokenizer has ~1k tokens, and the server's loader refuses a
    tokenizer under half the vocabulary (inference/loader.py). Real Qwen3's
    tokenizer has 151k tokens; here the BPE vocabulary is padded with reserved
    tokens (no merges reach them, so tokenisation is unchanged) up to half the
    vocab size. Weights are hard-linked, not copied.
    """
    from transformers import AutoConfig, AutoTokenizer

    vocab_size = AutoConfig.from_pretrained(model_dir).vocab_size
    if len(AutoTokenizer.from_pretrained(model_dir)) >= vocab_size // 2:
        return model_dir
    out.mkdir(parents=True)
    for p in Path(model_dir).iterdir():
        if p.is_file() and p.name != "tokenizer.json":
            os.link(p, out / p.name)
    data = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    for token in data["added_tokens"]:
        vocab.setdefault(token["content"], token["id"])
    next_id, i = max(vocab.values()) + 1, 0
    while next_id < vocab_size // 2 + 64:
        vocab[f"<|reserved_{i}|>"] = next_id
        next_id, i = next_id + 1, i + 1
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    return out


def run_one(preset: str, model_dir: Path | None, args) -> dict:
    from core.config import DeployTarget, from_dict
    from core.state.trainer_state import TrainerState, write_trainer_state
    from trainer.checkpoint import publish_checkpoint

    work = Path(tempfile.mkdtemp(prefix=f"cadence-deploy-bench-{preset}-", dir=args.workdir))
    t_build = time.perf_counter()
    if model_dir is None:
        from scripts.make_tiny_model import build_model

        model_dir = build_model(work / "base", preset=preset)
    model_dir = servable_copy(Path(model_dir), work / "servable")
    build_s = time.perf_counter() - t_build
    base = work / "cadence"
    (base / "control").mkdir(parents=True)
    (base / "control" / "admin.token").write_text(ADMIN_TOKEN + "\n")
    write_val(base / "val.jsonl", max(1, args.val_rows))
    port = free_port()
    data = {"paths": {"base_dir": str(base)},
            "model": {"base_model": str(model_dir), "max_length": 512},
            "training": {"micro_batch_tokens": 512},
            "comparison": {"validation_file": "val.jsonl", "validation_samples": args.val_rows,
                           "eval_samples": args.eval_samples, "max_new_tokens": 8, "margin": 0.0,
                           "torch_threads": args.score_threads},
            "data_manager": {"enabled": args.eval_samples > 0, "eval_count": max(1, args.eval_samples)},
            "deploy": {"health_window_seconds": args.health_window, "health_probe_interval": 0.5,
                       "link_local": not args.copy,
                       "targets": [DeployTarget(name="local", destination=str(work / "box_b"),
                                                server_url=f"http://127.0.0.1:{port}").model_dump()]},
            "inference": {"port": port, "max_model_len": 1024, "smoke_tokens": 4}}
    if args.engine == "vllm":  # each version on its own vLLM server behind the same front (inference/vllm_engine.py)
        data["inference"].update(engine="vllm", vllm_python=str(REPO / ".venv-vllm" / "bin" / "python"))
    cfg = from_dict(data, base)
    cfg.layout.ensure()
    config_path = base / "config.json"
    config_path.write_text(cfg.to_json())

    env = dict(os.environ, PYTHONPATH=str(REPO), CADENCE_ADMIN_TOKEN=ADMIN_TOKEN, HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    log = open(work / "inference.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "inference", "--config", str(config_path), "--log-level", "warning"],
                              cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    result: dict = {"preset": preset, "model_dir": str(model_dir), "build_s": round(build_s, 1)}
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"server exited; see {work / 'inference.log'}")
            if "start-up model failed" in (work / "inference.log").read_text(errors="replace"):
                raise RuntimeError(f"the server refused the model; see {work / 'inference.log'}")
            time.sleep(0.2)
        size = sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file())
        result["model_bytes"] = size
        load = Load(url, cfg.model.model_name, args.clients, args.max_tokens).start()
        time.sleep(1.0)

        def write(tmp: Path) -> None:  # the trainer's save: model files + training_state, then manifest + rename
            for p in Path(model_dir).iterdir():
                if p.is_file():
                    os.link(p, tmp / p.name) if args.link else shutil.copy2(p, tmp / p.name)
            sd = tmp / "training_state"
            sd.mkdir()
            (sd / "optimizer.safetensors").write_bytes(b"\0" * 1024)
            write_trainer_state(sd, TrainerState(global_step=100, files_done=["bench.jsonl"], examples_seen=1000))

        publish_checkpoint(cfg.layout.current_model, 100, write)
        saved = time.time()
        phases = lifecycle_path(cfg, args.poll, saved, url)
        load.finish()
        result.update(phases)
        result.update(requests_ok=load.ok, requests_failed=load.failed, versions_seen=sorted(v for v in load.versions if v),
                      errors=load.errors[:5])
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def lifecycle_path(cfg, poll: float, saved: float, url: str) -> dict:
    """What the lifecycle worker does for one new checkpoint, timed phase by phase (wall clock, time.time())."""
    from core.state.deployment import deployment_events, read_deployment_state
    from management.champion_rule import pick_champion
    from management.deployment_orchestrator import Orchestrator, active_content_id, tried_content_ids
    from management.model_comparison_engine import load_ledger, score_new_checkpoints, unscored
    from management.model_versioner import create_version

    # detect: the worker polls; the checkpoint appears at a random point of its interval (half an interval on average)
    while not unscored(cfg, load_ledger(cfg)):
        time.sleep(0.05)
    time.sleep(max(0.0, saved + poll / 2 - time.time()))
    marks = {"saved": saved, "detected": time.time()}
    [entry] = score_new_checkpoints(cfg)
    champ, decision = pick_champion(cfg, load_ledger(cfg), active_content_id(cfg), tried_content_ids(cfg))
    if champ is None:
        raise RuntimeError(f"no champion: {decision and decision.reason}")
    marks["scored"] = time.time()
    served_at = {}

    def watch():  # when does /v1/models first report the new version?
        with httpx.Client(timeout=5) as http:
            watch_loop(http)

    def watch_loop(http):
        while "t" not in served_at:
            try:
                data = http.get(url + "/v1/models").json()["data"][0]
                if data.get("content_id") == champ["content_id"]:
                    served_at["t"] = time.time()
                    return
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with Orchestrator(cfg) as orch:
        create_version(cfg, champ["checkpoint"])
        marks["versioned"] = time.time()
        result = orch.deploy(champ["checkpoint"])
    watcher.join(5)
    events = {e.event.value: e for e in deployment_events(cfg.layout) if e.content_id == champ["content_id"]}
    for name in ("copied", "verified", "loaded", "health_ok", "promoted"):
        if name in events:
            marks[name] = events[name].ts
    server_load = (result["timings"].get("local") or {}).get("server_load")
    t = {"detect": marks["detected"] - saved, "score": marks["scored"] - marks["detected"],
         "version": marks["versioned"] - marks["scored"]}
    if "promoted" in marks:
        t["copy"] = marks["copied"] - marks["versioned"]
        t["verify"] = marks["verified"] - marks["copied"]
        t["load"] = server_load                                       # server: manifest, weights, checks, smoke
        request = (result["timings"].get("local") or {}).get("load") or 0.0
        t["flip"] = request - (server_load or 0)             # the rest of the load request's round trip: flip + HTTP
        t["pre_load"] = (marks["loaded"] - marks["verified"]) - request   # asking the server what it serves first
        t["health"] = marks["health_ok"] - marks["loaded"]
        t["promote"] = marks["promoted"] - marks["health_ok"]
    t["saved_to_served"] = (served_at["t"] - saved) if "t" in served_at else None
    t["saved_to_promoted"] = (marks["promoted"] - saved) if "promoted" in marks else None
    t["status"] = result["status"]
    t["server_load"] = server_load
    t["score_detail"] = entry.get("timings")
    active = read_deployment_state(cfg.layout).active("local")
    t["active"] = active.version if active else None
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "qwen3-0.6b"], choices=["micro", "tiny", "qwen3-0.6b"])
    parser.add_argument("--model-dir", help="an already built model folder for the last preset (skips the build)")
    parser.add_argument("--val-rows", type=int, default=4, help="validation rows scored per checkpoint")
    parser.add_argument("--eval-samples", type=int, default=0, help="eval rows per skill generated per checkpoint")
    parser.add_argument("--score-threads", type=int, default=1,
                        help="comparison.torch_threads (default 1, the production default that leaves training a core)")
    parser.add_argument("--poll", type=float, default=2.0,
                        help="the lifecycle worker's comparison.watch_interval (default 2 s; detect = half of it on average)")
    parser.add_argument("--health-window", type=float, default=2.0, help="deploy.health_window_seconds")
    parser.add_argument("--clients", type=int, default=1, help="concurrent request loops during the deployment")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--copy", action="store_true",
                        help="deploy.link_local=false: byte-copy to the target and check the staged manifest (as for a remote box B)")
    parser.add_argument("--link", action="store_true", help="hard-link the checkpoint's files instead of copying (faster set-up)")
    parser.add_argument("--workdir", default=None, help="where the temporary base dirs go (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--engine", choices=["builtin", "vllm"], default="builtin",
                        help="inference.engine of the server under test (vllm: needs scripts/setup.sh --vllm)")
    parser.add_argument("--write-docs", action="store_true", help="write the result table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    run = BenchmarkRun.start("deploy", argv=None if argv is None else [__file__, *argv])
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = []
    for i, preset in enumerate(args.presets):
        model_dir = Path(args.model_dir) if args.model_dir and i == len(args.presets) - 1 else None
        print(f"== {preset} (engine {args.engine}) ==", flush=True)
        r = run_one(preset, model_dir, args)
        results.append(r)
        keys = ("detect", "score", "version", "copy", "verify", "pre_load", "load", "flip", "health", "promote")
        print(f"  model {r['model_bytes'] / 1e9:.2f} GB   status {r['status']}   active {r['active']}")
        print("  " + "  ".join(f"{k} {r[k]:.2f}s" if isinstance(r.get(k), (int, float)) else f"{k} -" for k in keys))
        print(f"  (load = the server's verify + load + checks + smoke; flip = the rest of that request's round trip; "
              f"score detail {r.get('score_detail')})")
        print(f"  saved -> served {r['saved_to_served']}s   saved -> promoted {r['saved_to_promoted']}s   "
              f"requests ok {r['requests_ok']} failed {r['requests_failed']} versions {r['versions_seen']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.write_docs:
        phases = ("detect", "score", "version", "copy", "verify", "pre_load", "load", "flip", "health", "promote")
        secs = lambda v: f"{v:.2f} s" if isinstance(v, (int, float)) else "-"
        run.write_docs(f"Checkpoint saved -> served (engine {args.engine}, {args.clients} client(s) sending requests)",
                       ["model", "saved -> served", "saved -> promoted", "requests ok / failed", "status",
                        "phases"],
                       [[f"{r['preset']} ({r['model_bytes'] / 1e9:.2f} GB)", secs(r["saved_to_served"]),
                         secs(r["saved_to_promoted"]), f"{r['requests_ok']} / {r['requests_failed']}", r["status"],
                         ", ".join(f"{k} {secs(r.get(k))}" for k in phases)] for r in results],
                       ["load = the server's verify + load + checks + smoke; flip = the rest of that request's round "
                        "trip. Goal: 0 failed requests, saved -> served <= 30 s for the Qwen3-0.6B size."])
    return 0 if all(r["requests_failed"] == 0 and r["status"] == "promoted" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
