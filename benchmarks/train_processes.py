"""`benchmarks/train_throughput.py --processes N`: Cadence on 1 process vs N ranks (DDP, FSDP2), tok/s and memory.

This module plans the runs, starts the ranks (the environment the daemon gives
them, core/launch.py), watches the host's memory and prints the tables; the
training itself runs in train_throughput.py's workers (`run_cadence`), which
attach a `MemoryProbe` to the engine.

Every run trains the same plan: each optimizer step is N micro-batches of
--step-tokens / N tokens (1 process runs all N, each rank one).

Measured per rank:
- tensor bytes held, from the tensors themselves (a DTensor counts its local
  shard): parameters, gradients (at the optimizer step, when they all exist),
  optimizer state (AdamW's two moments). DDP's gradient buckets (another copy of
  the gradients inside its reducer) are not reachable as tensors: they show in RSS.
- RSS: after setup; the highest sampled at the optimizer-step hooks (the steps'
  working set); the process's peak (ru_maxrss, model loading included) before
  the final checkpoint; and its peak at the end. The end-of-file checkpoint is
  part of every run: under FSDP2 rank 0 gathers the full weights and moments to
  write the single-process format, so its peak is set there.
Per run: the host's peak used memory (MemTotal - MemAvailable, sampled every
0.2 s, other jobs on the box included) and the peak sum of the ranks' RSS.

Memory safety (the box is shared): before a run its host memory is estimated
from the parameter count (`BYTES_PER_PARAM`). A run whose estimate does not fit
in MemAvailable minus --memory-headroom-gb runs at full depth without its
end-of-file checkpoint if that fits (`BYTES_PER_PARAM_STEPS`: FSDP2's rank-0
gather for the checkpoint is its peak; labelled "no ckpt"), else not at full
depth. Then every mode is measured at --fit-layers (the preset's widths, fewer
layers, checkpoint included) and the full-depth figures of what did not run are
extrapolated linearly in the number of layers, and labelled so; the modes that
did run at full depth give the error of that extrapolation. The sampler kills
the run's own ranks if MemAvailable falls below --min-available-gb.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

MB = 1e6
GB = 1e9

# Host memory of one run at its peak, in bytes per parameter (fp32 weights, AdamW), from the qwen3-0.6b runs here
# (1 process: 13.3 GB peak; FSDP2 on 2 ranks without the checkpoint: 17.7 GB for both ranks together):
#   1 process: weights 4 + gradients 4 + moments 8, + 6 seen (activations, the loaded file, the allocator).
#   DDP, per rank: the same + 4 for the reducer's gradient buckets.
#   FSDP2, per rank: its shards (16 / world) + ~6 at world 2 (the unsharded layer, embedding and their gradients,
#   the collectives' buffers): 14; and the end-of-file checkpoint adds, on rank 0, the full weights and moments it
#   gathers (12).
BYTES_PER_PARAM = {"none": lambda world: 22, "ddp": lambda world: 26 * world, "fsdp": lambda world: 14 * world + 12}
# The same without the end-of-file checkpoint (only FSDP2 differs).
BYTES_PER_PARAM_STEPS = dict(BYTES_PER_PARAM, fsdp=lambda world: 14 * world)
BASE_BYTES_PER_PROCESS = int(0.7 * GB)  # interpreter, torch, transformers


# ---------------------------------------------------------------------------------------------- in the worker
def vm_rss() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def max_rss() -> int:
    """This process's peak resident set so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def local_bytes(tensors) -> int:
    """Bytes of the tensors this process holds: a DTensor's local shard, all of a plain tensor."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        if hasattr(local, "numel") and local.dim() > 0:
            total += local.numel() * local.element_size()
    return total


def optimizer_state_bytes(optimizer) -> int:
    return local_bytes(v for values in optimizer.state.values() for v in values.values())


class MemoryProbe:
    """What one rank holds: parameters, gradients and optimizer state (bytes of the tensors) and its RSS, read at
    the optimizer step's hooks (gradients all present before the step; the moments exist after the first one)."""

    def __init__(self, engine):
        self.params = list(engine._net.parameters())  # the HF model's own: DTensors under FSDP2, shared by DDP
        self.optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # inside accelerate's wrapper
        self.rss_setup = vm_rss()
        self.peak_setup = max_rss()
        self.grad_bytes = 0
        self.rss_steps = 0
        self.peak_before_checkpoint: int | None = None
        self.optimizer.register_step_pre_hook(self._before_step)
        self.optimizer.register_step_post_hook(self._after_step)

    def _before_step(self, _optimizer, _args, _kwargs):
        self.grad_bytes = max(self.grad_bytes, local_bytes(p.grad for p in self.params))
        self.rss_steps = max(self.rss_steps, vm_rss())

    def _after_step(self, _optimizer, _args, _kwargs):
        self.rss_steps = max(self.rss_steps, vm_rss())

    def before_checkpoint(self) -> None:
        if self.peak_before_checkpoint is None:
            self.peak_before_checkpoint = max_rss()

    def result(self) -> dict:
        params, opt = local_bytes(self.params), optimizer_state_bytes(self.optimizer)
        return {"params_mb": params / MB, "grads_mb": self.grad_bytes / MB, "optimizer_state_mb": opt / MB,
                "held_mb": (params + self.grad_bytes + opt) / MB, "rss_setup_mb": self.rss_setup / MB,
                "peak_rss_setup_mb": self.peak_setup / MB, "rss_steps_mb": self.rss_steps / MB,
                "peak_rss_before_checkpoint_mb": (self.peak_before_checkpoint or max_rss()) / MB,
                "peak_rss_mb": max_rss() / MB}


# ---------------------------------------------------------------------------------------------- in the parent
def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def available_bytes() -> int:
    return meminfo()["MemAvailable"]


def _pid_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class HostWatch:
    """Samples the host's used memory and the ranks' RSS while a run lasts; kills the run's own ranks (by pid) if
    MemAvailable falls below `floor` bytes, so a benchmark never takes the shared box down."""

    def __init__(self, procs: list[subprocess.Popen], floor: int, interval: float = 0.2):
        self.procs, self.floor, self.interval = procs, floor, interval
        self.peak_used = self.peak_ranks = 0
        self.min_available = None
        self.aborted: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            info = meminfo()
            used, available = info["MemTotal"] - info["MemAvailable"], info["MemAvailable"]
            self.peak_used = max(self.peak_used, used)
            self.min_available = available if self.min_available is None else min(self.min_available, available)
            self.peak_ranks = max(self.peak_ranks, sum(_pid_rss(p.pid) for p in self.procs if p.poll() is None))
            if available < self.floor and self.aborted is None:
                self.aborted = f"MemAvailable fell to {available / GB:.1f} GB (< {self.floor / GB:.1f} GB): ranks killed"
                for p in self.procs:
                    if p.poll() is None:
                        p.kill()
            self._stop.wait(self.interval)


def spawn_ranks(script: Path, name: str, spec: dict, workdir: Path, verbose: bool, world: int, port: int,
                floor: int, timeout: float) -> dict:
    """One Cadence run on `world` ranks started as the daemon starts them; every rank's result (rank 0 first) and
    the host's memory during the run."""
    from core.launch import RankGroup, rank_env

    tag = name.replace(" ", "_")
    spec = dict(spec, job="cadence", result_path=str(workdir / f"result-{tag}.json"), out_dir=str(workdir / f"run-{tag}"))
    spec_path = workdir / f"spec-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{tag}.log"
    cmd = [sys.executable, str(script), "--worker", str(spec_path)]
    env = dict(os.environ, PYTHONPATH=str(script.resolve().parent.parent))
    with open(log_path, "w") as log:
        out = None if verbose else log
        envs = [env] if world == 1 else [rank_env(env, r, world, port) for r in range(world)]
        procs = [subprocess.Popen(cmd, cwd=env["PYTHONPATH"], stdout=out, stderr=subprocess.STDOUT, env=e) for e in envs]
        group = RankGroup(procs)
        with HostWatch(procs, floor) as watch:
            try:
                code = group.wait(timeout)
            except subprocess.TimeoutExpired:
                group.kill()
                group.wait()
                raise SystemExit(f"{name}: no result within {timeout:.0f} s; ranks killed (log: {log_path})")
    if watch.aborted:
        raise SystemExit(f"{name}: {watch.aborted} (log: {log_path})")
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}):\n{log_path.read_text()[-3000:]}")
    ranks = [json.loads(Path(spec["result_path"] + (f".rank{r}" if r else "")).read_text()) for r in range(world)]
    return {"ranks": ranks, "host_peak_used_mb": watch.peak_used / MB, "ranks_rss_sum_peak_mb": watch.peak_ranks / MB,
            "min_available_mb": (watch.min_available or 0) / MB, "world": world}


def estimate_bytes(mode: str, world: int, params: int, checkpoint: bool = True) -> int:
    table = BYTES_PER_PARAM if checkpoint else BYTES_PER_PARAM_STEPS
    return table[mode](world) * params + BASE_BYTES_PER_PROCESS * world


def extrapolate(points: dict[int, float], layers: int) -> tuple[float, float]:
    """Least-squares line through (layers, value) points; (value at `layers`, slope per layer)."""
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my + slope * (layers - mx), slope


FIELDS = (("params_mb", "params"), ("grads_mb", "grads"), ("optimizer_state_mb", "optim"), ("held_mb", "P+G+O"),
          ("rss_steps_mb", "RSS steps"), ("peak_rss_before_checkpoint_mb", "peak<ckpt"), ("peak_rss_mb", "peak end"))


def run_label(mode: str, world: int) -> str:
    return "1 process" if mode == "none" else f"{mode} x{world}"


def processes_mode(args, workdir: Path, script: Path, helpers) -> int:
    """The --processes comparison; `helpers` is train_throughput's module (data, FLOPs, matmul peak)."""
    import torch
    from scripts.make_tiny_model import PRESETS, build_model

    world = args.processes
    full_layers = args.layers or PRESETS[args.preset]["num_hidden_layers"]
    rows = helpers.make_rows(args.examples, args.min_tokens, args.max_tokens, args.seed)
    data_path = workdir / "data.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    models: dict[int, Path] = {}

    def model_at(layers: int) -> Path:
        folder = workdir / f"model-{layers}"
        if layers not in models and args.reuse and (folder / "config.json").is_file():  # same seed: the same model
            models[layers] = folder
        if layers not in models:
            print(f"building {args.preset} with {layers} layers ...", flush=True)
            models[layers] = build_model(workdir / f"model-{layers}", preset=args.preset, seed=args.seed,
                                         overrides={"num_hidden_layers": layers})
        return models[layers]

    model_dir = model_at(full_layers)
    examples = helpers.encode(rows, model_dir, args.max_length)
    flops = helpers.model_flops(model_dir, examples)
    micro = max(args.max_length, args.step_tokens // world)
    spec = {"data_path": str(data_path), "examples_path": str(workdir / "none.json"),
            "max_length": min(args.max_length, micro), "step_tokens": args.step_tokens, "lr": args.lr,
            "seed": args.seed, "warmup_steps": args.warmup_steps, "cadence_compile": args.cadence_compile,
            "micro_tokens": micro, "accumulation": world, "max_steps": args.steps, "memory_probe": True}
    Path(spec["examples_path"]).write_text("[]")
    print(f"model: {args.preset}, {full_layers} layers, {flops['params'] / 1e6:.2f}M parameters; torch "
          f"{torch.__version__}; {len(examples)} examples; each step = {world} micro-batches of <= {micro} tokens"
          + (f"; {args.steps} steps" if args.steps else ""))
    plan = [("fsdp", world), ("none", 1), ("ddp", world)]  # FSDP2 first: the smallest per rank
    headroom, floor = int(args.memory_headroom_gb * GB), int(args.min_available_gb * GB)
    runs: dict[tuple[str, int], dict] = {}  # (mode, layers) -> run
    too_big: list[str] = []
    port = args.master_port

    reused = {}
    if args.reuse:  # runs of an earlier invocation (its --json's .partial file), same arguments: not run again
        reused = {(key.split()[0], int(key.split()[1][1:])): r for key, r in json.loads(Path(args.reuse).read_text()).items()}

    def run(mode: str, n: int, layers: int, checkpoint: bool = True) -> None:
        nonlocal port
        name = f"{run_label(mode, n)} L{layers}" + ("" if checkpoint else " no-ckpt")
        earlier = reused.get((mode, layers))
        if earlier is not None and earlier["checkpoint"] == checkpoint:
            print(f"{name}: reused from {args.reuse}", flush=True)
            runs[(mode, layers)] = earlier
            return
        print(f"running {name} (MemAvailable {available_bytes() / GB:.1f} GB, load "
              f"{os.getloadavg()[0]:.1f}) ...", flush=True)
        dist_spec = dict(spec, model_dir=str(model_at(layers)), distributed="ddp" if mode == "none" else mode,
                         processes=n, skip_final_checkpoint=not checkpoint)
        runs[(mode, layers)] = dict(spawn_ranks(script, name, dist_spec, workdir, args.verbose, n, port, floor,
                                                args.run_timeout), checkpoint=checkpoint)
        port += 1
        if args.json:  # every run kept as soon as it ends: a later one may be cut short
            Path(args.json + ".partial").write_text(json.dumps({f"{m} L{x}": r for (m, x), r in runs.items()}))
        import shutil

        shutil.rmtree(workdir / f"run-{name.replace(' ', '_')}", ignore_errors=True)  # the 0.6B checkpoint: ~7 GB

    no_checkpoint: list[str] = []
    for mode, n in plan:
        if (mode, full_layers) in reused:
            checkpoint = reused[(mode, full_layers)]["checkpoint"]
            if not checkpoint:
                no_checkpoint.append(mode)
            run(mode, n, full_layers, checkpoint)
            continue
        need, have = estimate_bytes(mode, n, flops["params"]), available_bytes()
        steps_only = estimate_bytes(mode, n, flops["params"], checkpoint=False)
        if need + headroom <= have:
            run(mode, n, full_layers)
            continue
        if steps_only + headroom <= have:
            print(f"{run_label(mode, n)} at {full_layers} layers needs ~{need / GB:.1f} GB with its end-of-file "
                  f"checkpoint, ~{steps_only / GB:.1f} GB without (estimates); MemAvailable {have / GB:.1f} GB - "
                  f"headroom {args.memory_headroom_gb:g} GB: run without the checkpoint, whose figures are "
                  f"extrapolated from {args.fit_layers}", flush=True)
            no_checkpoint.append(mode)
            run(mode, n, full_layers, checkpoint=False)
            continue
        print(f"{run_label(mode, n)} at {full_layers} layers needs ~{steps_only / GB:.1f} GB (estimate); "
              f"MemAvailable {have / GB:.1f} GB - headroom {args.memory_headroom_gb:g} GB: not run at full "
              f"depth, extrapolated from {args.fit_layers}", flush=True)
        too_big.append(mode)
    if too_big or no_checkpoint:
        for layers in args.fit_layers:
            for mode, n in plan:
                run(mode, n, layers)
    print()
    _throughput_table(runs, full_layers, flops, helpers)
    print()
    _memory_table(runs, world)
    fsdp_opt, ddp_opt, ddp_source = _goal(runs, full_layers, args.fit_layers, too_big + no_checkpoint, world)
    ok = all(f < d for f, d in zip(fsdp_opt, ddp_opt))
    print(f"FSDP2 holds less optimizer state per rank than DDP at {full_layers} layers: {'yes' if ok else 'NO'} "
          f"(FSDP2 {', '.join(f'{x:.0f}' for x in fsdp_opt)} MB vs DDP {', '.join(f'{x:.0f}' for x in ddp_opt)} MB "
          f"per rank, DDP {ddp_source})")
    if args.json:
        Path(args.json).write_text(json.dumps({"flops": flops, "too_big": too_big, "no_checkpoint": no_checkpoint, "runs": {
            f"{run_label(m, runs[(m, layers)]['world'])} L{layers}": r for (m, layers), r in runs.items()}}, indent=2))
    return 0 if ok else 1


def _throughput_table(runs: dict, full_layers: int, flops: dict, helpers) -> None:
    full = {m: r for (m, layers), r in runs.items() if layers == full_layers}
    if "none" not in full:
        return
    peak, _n = helpers.matmul_peak_gflops()
    header = (f"{'run':14} {'steps':>5} {'tok/s (all ranks)':>17} {'best3 tok/s':>11} {'vs 1 proc':>9} {'MFU':>6}")
    print(header)
    print("-" * len(header))
    base, base3 = full["none"]["ranks"][0]["tokens_per_s"], full["none"]["ranks"][0]["best_window_tokens_per_s"]
    for mode, r in full.items():
        r0 = r["ranks"][0]
        mfu = r0["tokens_per_s"] * flops["flops_per_token"] / (peak * 1e9 * r["world"])
        best3 = f"{r0['best_window_tokens_per_s'] / base3:.2f}x" if base3 else "n/a: fewer than 3 timed steps"
        print(f"{run_label(mode, r['world']):14} {r0['steps']:>5} {r0['tokens_per_s']:>17.0f} "
              f"{r0['best_window_tokens_per_s']:>11.0f} {r0['tokens_per_s'] / base:>8.2f}x {mfu:>6.1%}   "
              f"(best3 {best3})")
    print(f"(tok/s counts the tokens of every rank's micro-batches; MFU against world x the matmul peak measured now "
          f"({peak:.1f} GFLOP/s) per process)")


def _memory_table(runs: dict, world: int) -> None:
    header = (f"{'run':16} {'rank':>4} " + " ".join(f"{label:>9}" for _k, label in FIELDS)
              + f" {'host peak':>9} {'ranks sum':>9}")
    print("memory per rank, MB (params / grads / optim: bytes of the tensors this rank holds, a DTensor's local "
          "shard; RSS steps: highest RSS at the optimizer steps; peak<ckpt: ru_maxrss before the final checkpoint; "
          "host peak: MemTotal - MemAvailable, the whole box)")
    print(header)
    print("-" * len(header))
    for (mode, layers), r in runs.items():
        for rank, values in enumerate(r["ranks"]):
            host = (f" {r['host_peak_used_mb']:>9.0f} {r['ranks_rss_sum_peak_mb']:>9.0f}" if rank == 0 else "")
            cells = [f"{values[k]:>9.0f}" for k, _label in FIELDS]
            if not r.get("checkpoint", True):
                cells[-1] = f"{'no ckpt':>9}"
            print(f"{run_label(mode, r['world']) + f' L{layers}':16} {rank:>4} " + " ".join(cells) + host)


def _goal(runs: dict, full_layers: int, fit_layers: list[int], too_big: list[str], world: int):
    """Per-rank optimizer state of FSDP2 and DDP at full depth (measured, or extrapolated from the fit layers, with
    the extrapolation table printed and checked against the modes that ran at full depth)."""
    if not too_big:
        return ([r["optimizer_state_mb"] for r in runs[("fsdp", full_layers)]["ranks"]],
                [r["optimizer_state_mb"] for r in runs[("ddp", full_layers)]["ranks"]], "measured")
    print()
    print(f"EXTRAPOLATED to {full_layers} layers (least-squares line through the runs at {fit_layers} layers, same "
          f"widths); 'measured' where that run also ran at {full_layers} layers, to show the error of the method:")
    header = f"{'run':12} {'rank':>4} {'figure':>10} {'slope/layer':>11} {'extrapolated':>12} {'measured':>9} {'error':>7}"
    print(header)
    print("-" * len(header))
    extrapolated: dict[str, list[float]] = {}
    for mode, n in (("fsdp", world), ("none", 1), ("ddp", world)):
        for rank in range(n):
            for key, label in (("optimizer_state_mb", "optim"), ("held_mb", "P+G+O"), ("rss_steps_mb", "RSS steps"),
                               ("peak_rss_before_checkpoint_mb", "peak<ckpt"), ("peak_rss_mb", "peak end")):
                points = {layers: runs[(mode, layers)]["ranks"][rank][key] for layers in fit_layers}
                value, slope = extrapolate(points, full_layers)
                measured = runs.get((mode, full_layers))
                m = measured["ranks"][rank][key] if measured else None
                if measured and not measured["checkpoint"] and key == "peak_rss_mb":
                    m = None  # that run skipped the checkpoint this figure includes
                err = f"{(value - m) / m:>+6.1%}" if m else ""
                print(f"{run_label(mode, n):12} {rank:>4} {label:>10} {slope:>11.1f} {value:>12.0f} "
                      f"{(f'{m:.0f}' if m else 'not run'):>9} {err:>7}")
                if key == "optimizer_state_mb":
                    extrapolated.setdefault(mode, []).append(value)
    fsdp = ([r["optimizer_state_mb"] for r in runs[("fsdp", full_layers)]["ranks"]] if ("fsdp", full_layers) in runs
            else extrapolated["fsdp"])
    ddp = ([r["optimizer_state_mb"] for r in runs[("ddp", full_layers)]["ranks"]] if ("ddp", full_layers) in runs
           else extrapolated["ddp"])
    return fsdp, ddp, "measured" if ("ddp", full_layers) in runs else "EXTRAPOLATED"
