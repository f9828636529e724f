"""Training throughput of Cadence's engine against HF Trainer and TRL SFTTrainer, measured in one run.

Default mode: one random tiny Qwen3 (scripts/make_tiny_model.py), one set of
mixed-length chat examples (~30-300 tokens, rendered with the model's chat
template, loss on assistant tokens only, the same labels for everyone), one
epoch for every contender, so each trains on the same real tokens. Each
contender runs in its own subprocess; the parent reads that child's peak RSS
from `os.wait4`. Reported per contender: real (non-pad) tokens per second over
the optimizer steps after `--warmup-steps` (wall time from the end of the last
warm-up step to the end of the last step, data loading and logging included),
peak RSS, padding share, and MFU against a fp32 `torch.mm` peak measured in the
same run.

  (a) hf      - transformers Trainer, DataCollatorForSeq2Seq (pads input_ids,
                labels with -100), sdpa attention, a fixed number of examples
                per step chosen so a step holds ~--step-tokens real tokens.
  (b) trl     - trl SFTTrainer on the same pre-tokenised examples and labels,
                --trl-packing (default bfd: best-fit-decreasing packs,
                padding-free, position_ids restarting per example) with packs
                of --trl-pack-tokens accumulated to ~--step-tokens per step.
                Without flash-attn (CPU), transformers runs such rows through
                SDPA with a dense block-diagonal mask, so TRL is fastest with
                short packs. `wrapped` needs no mask but lets attention cross
                examples and cuts them, so it is not a correct SFT baseline.
  (c) cadence - trainer.engine.TrainerEngine.train_file with
                micro_batch_tokens = --step-tokens and training.compile =
                --cadence-compile (default on: this file has ~20 steps, fewer
                than the compile_min_steps at which `auto` compiles; the
                compile happens during the untimed warm-up steps, like the
                other contenders' first-step costs).

All use torch.optim.AdamW with its fused kernel (transformers' default
`adamw_torch_fused`; Cadence's engine uses the same) (lr, betas (0.9, 0.95),
eps 1e-8, no weight decay), clipping at 1.0, constant LR without warmup, fp32, ~--step-tokens real tokens
per optimizer step.

`--preset qwen3-0.6b`: a random model with Qwen3-0.6B's architecture; HF
Trainer and Cadence each train a few short steps, then save a checkpoint and
load it in a fresh process. HF: trainer.save_model + torch.save(optimizer) /
from_pretrained + AdamW.load_state_dict. Cadence: its checkpoint
(save_pretrained + optimizer state in safetensors + RNG + manifest with a digest
per file, everything fsynced, renamed) / TrainerEngine.setup() from it (every
digest verified): Cadence's save returns durable, HF's is a plain write (no
fsync). Step time is compared per real token; only the batches the timed steps
consumed are counted.
Use --repeats 4 (contender order alternating) on a VM whose disk speed drifts.

`--processes N`: Cadence alone, the same plan (each step = N micro-batches of
--step-tokens / N tokens) on 1 process and on N processes with ddp and with fsdp
(CPU: gloo; the ranks started with the environment the daemon gives them,
core/launch.py): tok/s of all ranks together against 1 process, and per rank the
bytes of parameters, gradients and optimizer state it holds (FSDP2: its shards)
and its RSS, with the host's peak. A run that would not fit in the box's free
memory is measured at --fit-layers and extrapolated (labelled so); see
benchmarks/train_processes.py. On 2 cores expect no speed-up: the point is
correctness, the cost of the collectives and the memory per rank.

Run as:
    .venv/bin/python benchmarks/train_throughput.py                       # tiny model, ~4 min on 2 idle cores
    .venv/bin/python benchmarks/train_throughput.py --examples 300 --contenders cadence,trl
    .venv/bin/python benchmarks/train_throughput.py --preset qwen3-0.6b   # step time + checkpoint save/load
    .venv/bin/python benchmarks/train_throughput.py --processes 2         # 1 vs 2 processes, ddp and fsdp
    .venv/bin/python benchmarks/train_throughput.py --processes 2 --preset qwen3-0.6b   # memory per rank, 0.6B
"""
from __future__ import annotations

import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/train_throughput.py`: the repo root, not benchmarks/

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CONTENDERS = ("hf", "trl", "cadence")
BEST_WINDOW = 3  # steps
TRL_PACKING = ("bfd", "bfd_split", "wrapped", "padding_free")
WORDS = (
    "the a an is are was to of and in that have it for not on with he as you do at this but his by from they we "
    "say her she or will my one all would there their what so up out if about who get which go me when make can "
    "like time no just him know take people into year your good some could them see other than then now look only "
    "come its over think also back after use two how our work first well way even new want because any these give "
    "day most us answer question solve add number binary result word puzzle clue true false yes cat dog bird fish "
    "tree red blue green small large fast slow hello thanks please sure step second third final output input list"
).split()

OPTIM = dict(weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0)


# ---------------------------------------------------------------------------------------------- data
def make_rows(n: int, min_tokens: int, max_tokens: int, seed: int) -> list[dict]:
    """Chat rows whose rendered length is spread log-uniformly over [min_tokens, max_tokens] (roughly: ~1 token a word)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        target = int(round(min_tokens * (max_tokens / min_tokens) ** rng.random()))
        turns = 1 if target < 80 else rng.randint(1, 3)
        messages = []
        budget = target - 5 * 2 * turns  # ChatML framing is ~5 tokens a message
        if rng.random() < 0.5 and budget > 30:
            messages.append({"role": "system", "content": _sentence(rng, 6)})
            budget -= 11
        per_turn = max(4, budget // turns)
        for _t in range(turns):
            user = max(2, int(per_turn * rng.uniform(0.2, 0.5)))
            messages.append({"role": "user", "content": _sentence(rng, user)})
            messages.append({"role": "assistant", "content": _sentence(rng, max(2, per_turn - user))})
        rows.append({"messages": messages})
    return rows


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def encode(rows: list[dict], model_dir: Path, max_length: int):
    from trainer.data import encode_examples, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    examples = encode_examples(rows, tokenizer, "chat_sft_v1", max_length)
    bad = [e.error for e in examples if e.error]
    if bad:
        raise SystemExit(f"benchmark data has {len(bad)} unusable rows, e.g. {bad[0]}")
    return examples


# ---------------------------------------------------------------------------------------------- workers
class StepClock:
    """Wall-clock time at the end of every optimizer step, and the real tokens of every collated batch."""

    def __init__(self):
        self.step_ends: list[float] = []
        self.batch_tokens: list[int] = []

    def result(self, warmup: int, total_tokens: int, padded_positions: int, accumulation: int = 1) -> dict:
        steps = len(self.step_ends)
        if steps <= warmup:
            raise SystemExit(f"only {steps} steps ran; need more than --warmup-steps {warmup} (raise --examples)")
        seconds = self.step_ends[-1] - self.step_ends[warmup - 1] if warmup else self.step_ends[-1] - self.started
        # only the batches the timed steps consumed: accelerate's dataloader collates one batch ahead (to spot
        # the last one), so a run stopped by max_steps has collated a batch it never trained on
        tokens = sum(self.batch_tokens[warmup * accumulation:steps * accumulation])
        # Best rate over any BEST_WINDOW consecutive timed steps: on a machine shared with other jobs, the closest
        # this run gets to each contender's speed on idle cores (the overall rate mixes in other jobs' bursts).
        per_step = [sum(self.batch_tokens[i * accumulation:(i + 1) * accumulation]) for i in range(steps)]
        starts = [self.started if warmup == 0 else None] + self.step_ends[:-1]
        best = 0.0
        for i in range(max(1, warmup), steps - BEST_WINDOW + 1):
            best = max(best, sum(per_step[i:i + BEST_WINDOW]) / (self.step_ends[i + BEST_WINDOW - 1] - starts[i]))
        return {"steps": steps, "timed_steps": steps - warmup, "timed_tokens": tokens, "timed_seconds": seconds,
                "tokens_per_s": tokens / seconds, "best_window_tokens_per_s": best, "total_tokens": total_tokens,
                "padded_positions": padded_positions, "step_times": _diffs(self.step_ends)}


def _diffs(xs: list[float]) -> list[float]:
    return [round(b - a, 4) for a, b in zip(xs[:-1], xs[1:])]


def _hf_training_args(spec: dict, **extra):
    return dict(output_dir=spec["out_dir"], per_device_train_batch_size=spec["batch_size"],
                gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="constant",
                warmup_steps=0, optim="adamw_torch_fused", num_train_epochs=1, max_steps=spec.get("max_steps") or -1,
                logging_steps=10, save_strategy="no", report_to="none", use_cpu=_device().type == "cpu", bf16=False, fp16=False,
                dataloader_num_workers=0, seed=spec["seed"], data_seed=spec["seed"], disable_tqdm=True, **OPTIM,
                **extra)


def _clock_callback(clock: StepClock):
    from transformers import TrainerCallback

    class _Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_ends.append(time.perf_counter())

    return _Clock()


class _CountingCollator:
    """Wraps a collator; records the real (non-pad) tokens of each batch it builds."""

    def __init__(self, inner, clock: StepClock):
        self.inner, self.clock = inner, clock
        self.padded_positions = 0

    def __call__(self, features):
        batch = self.inner(features)
        if "attention_mask" in batch:
            real = int(batch["attention_mask"].sum())
        else:  # padding-free: one flat row, nothing padded
            real = int(batch["input_ids"].numel())
        self.clock.batch_tokens.append(real)
        self.padded_positions += int(batch["input_ids"].numel())
        return batch


def _examples_dataset(examples):
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])


def run_hf(spec: dict, examples) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    clock = StepClock()
    collator = _CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100), clock)
    trainer = Trainer(model=model, args=TrainingArguments(**_hf_training_args(spec, remove_unused_columns=False)),
                      train_dataset=_examples_dataset(examples), data_collator=collator,
                      callbacks=[_clock_callback(clock)])
    trainer.train()
    out = clock.result(spec["warmup_steps"], sum(clock.batch_tokens), collator.padded_positions)
    if spec.get("checkpoint"):
        out.update(_hf_save(trainer, Path(spec["out_dir"]) / "hf-checkpoint"))
    return out


def _hf_save(trainer, folder: Path) -> dict:
    import torch

    started = time.perf_counter()
    trainer.save_model(str(folder))
    torch.save(trainer.optimizer.state_dict(), folder / "optimizer.pt")
    return {"save_seconds": time.perf_counter() - started, "checkpoint_dir": str(folder),
            "checkpoint_bytes": _tree_bytes(folder)}


def load_hf(spec: dict) -> dict:
    """What Trainer does to resume: from_pretrained, create its optimizer, load the optimizer state."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    folder = Path(spec["checkpoint_dir"])
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")
    trainer = Trainer(model=model, args=TrainingArguments(**_hf_training_args(spec)))
    optimizer = trainer.create_optimizer()
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    return {"load_seconds": time.perf_counter() - started}


def run_trl(spec: dict, examples) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    mode = spec["trl_packing"]
    accumulation = 1
    if mode == "padding_free":  # flatten each batch of examples into one row, no packing across steps
        extra = dict(packing=False, padding_free=True, max_length=None)
    else:
        # packs of <= trl_pack_tokens, one per micro-batch, accumulated up to ~step_tokens per optimizer step:
        # without flash-attn, TRL's padding-free rows go through SDPA with a dense block-diagonal T x T mask, so
        # shorter packs spend far less on attention.
        accumulation = max(1, spec["step_tokens"] // spec["trl_pack_tokens"])
        extra = dict(packing=True, packing_strategy=mode, max_length=spec["trl_pack_tokens"])
        spec = dict(spec, batch_size=1)
    args = SFTConfig(**dict(_hf_training_args(spec), gradient_accumulation_steps=accumulation), **extra,
                     dataset_num_proc=None)
    clock = StepClock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=_examples_dataset(examples), processing_class=tokenizer,
                         callbacks=[_clock_callback(clock)])
    trainer.data_collator = _CountingCollator(trainer.data_collator, clock)
    trainer.train()
    return clock.result(spec["warmup_steps"], sum(clock.batch_tokens), trainer.data_collator.padded_positions,
                        accumulation)


def _cadence_config(spec: dict):
    from core.config import from_dict

    base = Path(spec["out_dir"])
    data = {
        "paths": {"base_dir": str(base)},
        "model": {"base_model": spec["model_dir"], "max_length": spec["max_length"], "dtype": "float32"},
        "training": {"learning_rate": spec["lr"], "warmup_steps": 0, "lr_schedule": "constant",
                     "micro_batch_tokens": spec["step_tokens"], "gradient_accumulation_steps": 1,
                     "eval_steps": 0, "save_steps": spec.get("save_steps") or 10 ** 9, "log_steps": 10, "eval_split_fraction": 0.0,
                     "seed": spec["seed"], "max_steps_per_file": spec.get("max_steps"),
                     "compile": spec.get("cadence_compile", "on"),
                     "weight_decay": OPTIM["weight_decay"], "adam_beta1": OPTIM["adam_beta1"],
                     "adam_beta2": OPTIM["adam_beta2"], "adam_epsilon": OPTIM["adam_epsilon"],
                     "max_grad_norm": OPTIM["max_grad_norm"]},
        "safety": {"min_free_disk_gb": 0},
    }
    cfg = from_dict(data, base)
    cfg.layout.ensure()
    return cfg


def run_cadence(spec: dict, examples) -> dict:
    from trainer.engine import TrainerEngine

    cfg = _cadence_config(spec)
    if spec.get("distributed"):
        t = cfg.training
        t.distributed, t.num_processes = spec["distributed"], spec["processes"]
        t.micro_batch_tokens, t.gradient_accumulation_steps = spec["micro_tokens"], spec["accumulation"]
    engine = TrainerEngine(cfg, new_run=True).setup()
    probe = None
    if spec.get("memory_probe"):
        from benchmarks.train_processes import MemoryProbe

        probe = MemoryProbe(engine)
    clock = StepClock()
    clock.started = time.perf_counter()
    train_step, checkpoint = engine._train_step, engine._checkpoint
    saves: list[float] = []

    def timed_step(*args, **kwargs):
        loss, n_tokens = train_step(*args, **kwargs)
        clock.step_ends.append(time.perf_counter())
        clock.batch_tokens.append(n_tokens)
        return loss, n_tokens

    def timed_checkpoint(reason):
        if probe is not None:
            probe.before_checkpoint()
        if reason == "end_of_file" and spec.get("skip_final_checkpoint"):  # every rank alike: no collective waits
            return None
        started = time.perf_counter()
        info = checkpoint(reason)
        saves.append(time.perf_counter() - started)
        return info

    engine._train_step, engine._checkpoint = timed_step, timed_checkpoint
    result = engine.train_file(spec["data_path"], file_id="benchmark", schema_id="chat_sft_v1")
    if result.status != "completed":
        raise SystemExit(f"cadence did not complete the file: {result}")
    out = clock.result(spec["warmup_steps"], result.tokens, result.tokens)
    if probe is not None:
        out.update(probe.result())
    out["rank"] = engine.rank
    if spec.get("checkpoint"):
        info = [p for p in engine.checkpoint_root.iterdir() if p.name.startswith("checkpoint-")][-1]
        out.update({"save_seconds": saves[-1], "checkpoint_dir": str(info), "checkpoint_bytes": _tree_bytes(info)})
    return out


def load_cadence(spec: dict) -> dict:
    import accelerate  # noqa: F401  (imported before the clock starts, as load_hf imports transformers)
    from transformers import AutoModelForCausalLM  # noqa: F401

    from trainer.engine import TrainerEngine

    started = time.perf_counter()
    engine = TrainerEngine(_cadence_config(spec)).setup()
    seconds = time.perf_counter() - started
    if engine.global_step == 0:
        raise SystemExit("cadence setup did not resume from the checkpoint")
    return {"load_seconds": seconds}


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def worker(spec_path: Path) -> int:
    import torch

    spec = json.loads(spec_path.read_text())
    torch.manual_seed(spec["seed"])
    if spec["job"].startswith("load-"):
        out = {"load-hf": load_hf, "load-cadence": load_cadence}[spec["job"]](spec)
    else:
        from trainer.data import EncodedExample

        examples = [EncodedExample(**e) for e in json.loads(Path(spec["examples_path"]).read_text())]
        out = {"hf": run_hf, "trl": run_trl, "cadence": run_cadence}[spec["job"]](spec, examples)
    import resource

    out.setdefault("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # a probe's: MB of 1e6
    rank = int(os.environ.get("RANK", "0"))
    Path(spec["result_path"] + (f".rank{rank}" if rank else "")).write_text(json.dumps(out))
    return 0


def spawn(job: str, spec: dict, workdir: Path, verbose: bool) -> dict:
    """Run one job in a fresh interpreter; returns its result with the child's own peak RSS."""
    spec = dict(spec, job=job, result_path=str(workdir / f"result-{job}.json"),
                out_dir=spec.get("out_dir") or str(workdir / f"run-{job}"))
    spec_path = workdir / f"spec-{job}.json"
    spec_path.write_text(json.dumps(spec))
    log = open(workdir / f"{job}.log", "w")
    os.sync()  # no contender pays for the writeback of an earlier one's files
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)], cwd=REPO,
                            stdout=None if verbose else log, stderr=subprocess.STDOUT if not verbose else None)
    _pid, status, usage = os.wait4(proc.pid, 0)
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (workdir / f"{job}.log").read_text()[-3000:]
        raise SystemExit(f"{job} failed (exit {os.waitstatus_to_exitcode(status)}):\n{tail}")
    out = json.loads(Path(spec["result_path"]).read_text())
    out["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    out["process_seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------------------------- measurement
def _device():
    """Where the contenders train: the GPU when there is one (HF Trainer, TRL and Cadence all pick it), else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _timed(fn, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def matmul_peak_gflops(sizes=None, repeats: int = 5) -> tuple[float, int]:
    """Best fp32 torch.mm rate on the training device (CPU: current torch thread count; CUDA: with TF32 as the
    process has it, off by default), and the size that reached it."""
    import torch

    device = _device()
    sizes = sizes or ((2048, 4096, 8192) if device.type == "cuda" else (1024, 2048, 3072))
    best, best_n = 0.0, 0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        torch.mm(a, b)
        for _ in range(repeats):
            rate = 2 * n ** 3 / _timed(lambda: torch.mm(a, b), device) / 1e9
            if rate > best:
                best, best_n = rate, n
    return best, best_n


def model_gemm_gflops(model_dir: Path, tokens: int, repeats: int = 3) -> float:
    """fp32 rate of the model's own GEMMs (every linear layer, forward + both backward products) at `tokens` rows
    on the training device: the ceiling for any engine on this model, since everything else it does adds time
    without adding model FLOPs."""
    import torch
    from transformers import AutoConfig

    device = _device()
    cfg = AutoConfig.from_pretrained(model_dir)
    d, heads, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    shapes = [(d, heads * head_dim), (d, kv * head_dim), (d, kv * head_dim), (heads * head_dim, d),
              (d, cfg.intermediate_size), (d, cfg.intermediate_size), (cfg.intermediate_size, d)]
    best = float("inf")
    tensors = [tuple(torch.randn(*shape, device=device) for shape in ((tokens, i), (i, o), (tokens, o)))
               for i, o in shapes]

    def gemms():
        for x, w, g in tensors:
            x @ w, g @ w.T, x.T @ g  # forward, grad wrt input, grad wrt weight

    for _ in range(repeats):
        best = min(best, _timed(gemms, device))
    flops = sum(3 * 2 * tokens * i * o for i, o in shapes)
    return flops / best / 1e9


def model_flops(model_dir: Path, examples) -> dict:
    """Training FLOPs per real token: 6*N (N = all parameters, tied embedding counted once, i.e. the LM head)
    plus causal attention 6 * layers * heads * head_dim * sum(L^2) / sum(L) (QK^T and AV, forward + 2x backward,
    half the square because of the causal mask)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    d, v, layers, heads = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    kv = cfg.num_key_value_heads
    per_layer = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * cfg.intermediate_size + 2 * d + 2 * head_dim
    embed = v * d
    params = layers * per_layer + embed + d + (0 if cfg.tie_word_embeddings else embed)
    lengths = [e.n_tokens for e in examples]
    supervised = sum(e.n_supervised for e in examples) / sum(lengths)
    attn = 6 * layers * heads * head_dim * sum(n * n for n in lengths) / sum(lengths)
    return {"params": params, "head_params": embed, "attn_flops_per_token": attn, "supervised_share": supervised,
            "flops_per_token": 6 * params + attn,
            # what Cadence executes: the LM head (forward + backward) only at supervised positions
            "cadence_flops_per_token": 6 * (params - embed) + 6 * embed * supervised + attn}


# ---------------------------------------------------------------------------------------------- modes
def throughput_mode(args, workdir: Path) -> int:
    import statistics

    import torch
    from scripts.make_tiny_model import build_model

    model_dir = build_model(workdir / "model", preset=args.preset, seed=args.seed)
    rows = make_rows(args.examples, args.min_tokens, args.max_tokens, args.seed)
    examples = encode(rows, model_dir, args.max_length)
    data_path = workdir / "data.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples_path = workdir / "examples.json"
    examples_path.write_text(json.dumps([{"input_ids": e.input_ids, "labels": e.labels,
                                          "original_length": e.original_length} for e in examples]))
    lengths = sorted(e.n_tokens for e in examples)
    mean_len = statistics.fmean(lengths)
    batch_size = max(1, round(args.step_tokens / mean_len))
    flops = model_flops(model_dir, examples)
    peak, peak_n = matmul_peak_gflops()
    gemm = model_gemm_gflops(model_dir, args.step_tokens)
    print(f"model: {args.preset}, {flops['params'] / 1e6:.2f}M parameters; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"data: {len(examples)} chat examples, {sum(lengths)} real tokens, length min/median/max "
          f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]} (mean {mean_len:.0f}), "
          f"{flops['supervised_share']:.0%} of tokens supervised")
    print(f"step: ~{args.step_tokens} real tokens (hf: {batch_size} examples padded; trl: {args.trl_packing} packs of "
          f"<= {args.trl_pack_tokens} accumulated; cadence: micro_batch_tokens {args.step_tokens}), AdamW lr {args.lr}, fp32, "
          f"first {args.warmup_steps} steps untimed")
    print(f"matmul peak: {peak:.1f} GFLOP/s (fp32 torch.mm {peak_n}x{peak_n} on {_device().type}); this model's own layer GEMMs at "
          f"{args.step_tokens} rows: {gemm:.1f} GFLOP/s = {gemm / peak:.0%} of peak (the MFU ceiling for any engine)")
    spec = {"model_dir": str(model_dir), "examples_path": str(examples_path), "data_path": str(data_path),
            "max_length": min(args.max_length, args.step_tokens), "step_tokens": args.step_tokens, "batch_size": batch_size, "lr": args.lr,
            "seed": args.seed, "warmup_steps": args.warmup_steps, "trl_packing": args.trl_packing,
            "cadence_compile": args.cadence_compile, "trl_pack_tokens": min(args.trl_pack_tokens, args.step_tokens)}
    results = {}
    for name in args.contenders:
        print(f"running {name} ...", flush=True)
        results[name] = spawn(name, spec, workdir, args.verbose)
    print()
    labels = {"hf": "(a) HF Trainer, padding collator",
              "trl": f"(b) TRL SFTTrainer, {args.trl_packing} {spec['trl_pack_tokens']}",
              "cadence": f"(c) Cadence, compile {args.cadence_compile}"}
    header = (f"{'contender':36} {'steps':>5} {'real tok':>9} {'padding':>8} {'tok/s':>7} {'best3 tok/s':>11} "
              f"{'peak RSS MB':>11} {'MFU':>6} {'best3 MFU':>9}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        pad = 1 - r["total_tokens"] / r["padded_positions"] if r["padded_positions"] else 0.0
        mfu = r["tokens_per_s"] * flops["flops_per_token"] / (peak * 1e9)
        best_mfu = r["best_window_tokens_per_s"] * flops["flops_per_token"] / (peak * 1e9)
        print(f"{labels[name]:36} {r['steps']:>5} {r['total_tokens']:>9} {pad:>8.1%} {r['tokens_per_s']:>7.0f} "
              f"{r['best_window_tokens_per_s']:>11.0f} {r['peak_rss_mb']:>11.0f} {mfu:>6.1%} {best_mfu:>9.1%}")
    print(f"(tok/s: all timed steps; best3: fastest {BEST_WINDOW} consecutive steps, the least disturbed by other jobs)")
    print()
    if "cadence" in results:
        c = results["cadence"]["tokens_per_s"]
        cb = results["cadence"]["best_window_tokens_per_s"]
        for name, goal in (("hf", 2.0), ("trl", 2.0)):
            if name in results:
                ratio = c / results[name]["tokens_per_s"]
                best = cb / results[name]["best_window_tokens_per_s"]
                print(f"Cadence / {name.upper():3}: {ratio:.2f}x all steps, {best:.2f}x best3  (goal >= {goal:.0f}x: "
                      f"{'met' if ratio >= goal else 'NOT met'} / {'met' if best >= goal else 'NOT met'})")
        mfu = c * flops["flops_per_token"] / (peak * 1e9)
        best_mfu = cb * flops["flops_per_token"] / (peak * 1e9)
        hfu = c * flops["cadence_flops_per_token"] / (peak * 1e9)
        print(f"Cadence MFU: {mfu:.1%} all steps, {best_mfu:.1%} best3 (goal >= 50%: "
              f"{'met' if mfu >= 0.5 else 'NOT met'} / {'met' if best_mfu >= 0.5 else 'NOT met'}); "
              f"{c * flops['flops_per_token'] / 1e9:.1f} of {peak:.1f} GFLOP/s")
        print(f"  formula: (6 * N * tokens + attention) / matmul peak, N = {flops['params']:,} parameters "
              f"(tied embedding counted once = LM head), attention = 6 * layers * heads * head_dim * sum(L^2)/sum(L) "
              f"= {flops['attn_flops_per_token'] / 1e6:.2f} MFLOP/token")
        print(f"  counting only the FLOPs Cadence executes (LM head on the {flops['supervised_share']:.0%} supervised "
              f"positions): {hfu:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"flops": flops, "peak_gflops": peak, "model_gemm_gflops": gemm,
                                                 "results": results}, indent=2))
    return 0


def checkpoint_mode(args, workdir: Path) -> int:
    import statistics

    from scripts.make_tiny_model import build_model

    started = time.perf_counter()
    model_dir = Path(args.model_dir) if args.model_dir else build_model(workdir / "model", preset=args.preset, seed=args.seed)
    print(f"model: {args.preset} at {model_dir} (built/loaded in {time.perf_counter() - started:.0f} s)")
    steps = args.steps or 3
    rows = make_rows(args.examples or 64, args.min_tokens, args.max_tokens, args.seed)
    examples = encode(rows, model_dir, args.max_length)
    flops = model_flops(model_dir, examples)
    mean_len = statistics.fmean(e.n_tokens for e in examples)
    batch_size = max(1, round(args.step_tokens / mean_len))
    data_path = workdir / "data.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples_path = workdir / "examples.json"
    examples_path.write_text(json.dumps([{"input_ids": e.input_ids, "labels": e.labels,
                                          "original_length": e.original_length} for e in examples]))
    print(f"{flops['params'] / 1e6:.0f}M parameters; {steps} steps of ~{args.step_tokens} real tokens "
          f"(examples {args.min_tokens}-{args.max_tokens} tokens; hf batch {batch_size}); first "
          f"{args.warmup_steps} untimed; then save a checkpoint and load it in a fresh process")
    spec = {"model_dir": str(model_dir), "examples_path": str(examples_path), "data_path": str(data_path),
            "max_length": min(args.max_length, args.step_tokens), "step_tokens": args.step_tokens, "batch_size": batch_size, "lr": args.lr,
            "seed": args.seed, "warmup_steps": args.warmup_steps, "trl_packing": args.trl_packing,
            "cadence_compile": args.cadence_compile, "max_steps": steps, "checkpoint": True}
    runs: dict[str, list] = {"hf": [], "cadence": []}
    for round_ in range(args.repeats):
        order = ("hf", "cadence") if round_ % 2 == 0 else ("cadence", "hf")  # alternate: neither always goes first
        for name in order:
            print(f"round {round_ + 1}/{args.repeats}: running {name} ...", flush=True)
            train = spawn(name, spec, workdir, args.verbose)
            load_spec = dict(spec, checkpoint_dir=train.get("checkpoint_dir"), out_dir=str(workdir / f"run-{name}"))
            load = spawn(f"load-{name}", load_spec, workdir, args.verbose)
            runs[name].append({"train": train, "load": load})
            shutil.rmtree(workdir / f"run-{name}", ignore_errors=True)  # ~7 GB each
    results = {name: _median_run(r) for name, r in runs.items()}
    if args.repeats > 1:
        print(f"\nmedians over {args.repeats} rounds; every round's save / load seconds:")
        for name, r in runs.items():
            print(f"  {name:8} save {[round(x['train']['save_seconds'], 2) for x in r]}  "
                  f"load {[round(x['load']['load_seconds'], 2) for x in r]}")
    print()
    header = (f"{'contender':28} {'step s':>7} {'tok/step':>8} {'tok/s':>7} {'save s':>7} {'load s':>7} {'ckpt GB':>8} "
              f"{'train RSS GB':>12} {'load RSS GB':>11}")
    print(header)
    print("-" * len(header))
    labels = {"hf": "HF Trainer", "cadence": "Cadence TrainerEngine"}
    for name, r in results.items():
        t, ld = r["train"], r["load"]
        step = t["timed_seconds"] / t["timed_steps"]
        print(f"{labels[name]:28} {step:>7.2f} {t['timed_tokens'] / t['timed_steps']:>8.0f} {t['tokens_per_s']:>7.0f} {t['save_seconds']:>7.2f} "
              f"{ld['load_seconds']:>7.2f} {t['checkpoint_bytes'] / 1e9:>8.2f} {t['peak_rss_mb'] / 1024:>12.1f} "
              f"{ld['peak_rss_mb'] / 1024:>11.1f}")
    print()
    if len(results) == 2:
        hf, ca = results["hf"], results["cadence"]
        # step time per real token: the two frameworks' steps do not hold exactly the same number of tokens
        for what, key, part in (("step time per token", "seconds_per_token", "train"),
                                ("save", "save_seconds", "train"), ("load", "load_seconds", "load")):
            a, b = ca[part][key], hf[part][key]
            print(f"Cadence / HF {what}: {a / b:.2f}  (goal <= 1: {'met' if a / b <= 1 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"flops": flops, "results": results}, indent=2))
    return 0


def _median_run(runs: list[dict]) -> dict:
    """One run's record whose numbers are each the median over the rounds."""
    import statistics

    out = {part: dict(runs[0][part]) for part in ("train", "load")}
    for part, keys in (("train", ("timed_seconds", "timed_tokens", "tokens_per_s", "save_seconds", "peak_rss_mb")),
                       ("load", ("load_seconds", "peak_rss_mb"))):
        for key in keys:
            out[part][key] = statistics.median(r[part][key] for r in runs)
    out["train"]["seconds_per_token"] = statistics.median(r["train"]["timed_seconds"] / r["train"]["timed_tokens"]
                                                          for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--preset", default="tiny", choices=("tiny", "micro", "qwen3-0.6b"),
                        help="model architecture (default tiny, ~4M parameters); qwen3-0.6b runs the checkpoint mode")
    parser.add_argument("--examples", type=int, default=None, help="chat examples (default 600; 64 for qwen3-0.6b)")
    parser.add_argument("--min-tokens", type=int, default=None, help="shortest example target (default 30; 24 for qwen3-0.6b)")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest example target (default 300; 96 for qwen3-0.6b)")
    parser.add_argument("--step-tokens", type=int, default=None, help="real tokens per optimizer step (default 4096; 256 for qwen3-0.6b)")
    parser.add_argument("--max-length", type=int, default=1024, help="model max_length (longer examples are truncated)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed optimizer steps at the start (default 3; 1 for qwen3-0.6b)")
    parser.add_argument("--checkpoint", action="store_true",
                        help="run the step time + checkpoint save/load comparison (implied by --preset qwen3-0.6b)")
    parser.add_argument("--steps", type=int, default=None, help="qwen3-0.6b mode: optimizer steps per contender (default 3)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="qwen3-0.6b mode: rounds (contender order alternating), medians reported (default 1)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate for every contender")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list of hf,trl,cadence")
    parser.add_argument("--trl-packing", default="bfd", choices=TRL_PACKING, help="TRL setting (default bfd)")
    parser.add_argument("--trl-pack-tokens", type=int, default=1024,
                        help="TRL pack length; packs are accumulated to ~--step-tokens per optimizer step (default 1024)")
    parser.add_argument("--cadence-compile", default="on", choices=("on", "auto", "off"),
                        help="Cadence's training.compile (default on; off = eager layers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", default=None, help="qwen3-0.6b mode: reuse a model built earlier")
    parser.add_argument("--workdir", default=None, help="keep models, data and logs here (default: a temp dir, removed)")
    parser.add_argument("--json", default=None, help="also write all measurements to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="show the workers' output instead of logging it")
    parser.add_argument("--throughput", action="store_true",
                        help="the throughput comparison (hf, trl, cadence) even for --preset qwen3-0.6b, no save/load")
    parser.add_argument("--processes", type=int, default=None,
                        help="compare Cadence on 1 vs N processes (ddp and fsdp, CPU gloo); see the description")
    parser.add_argument("--master-port", type=int, default=18650, help="--processes: rank-0 rendezvous port")
    parser.add_argument("--layers", type=int, default=None,
                        help="--processes: the preset's widths with this many layers (default: the preset's)")
    parser.add_argument("--fit-layers", default="2,4",
                        help="--processes: layer counts measured when a full-depth run would not fit in memory "
                             "(default 2,4)")
    parser.add_argument("--memory-headroom-gb", type=float, default=2.0,
                        help="--processes: a run starts at full depth only if its estimate + this fits in MemAvailable")
    parser.add_argument("--min-available-gb", type=float, default=1.5,
                        help="--processes: kill a run's ranks if the host's MemAvailable falls below this")
    parser.add_argument("--run-timeout", type=float, default=3600, help="--processes: seconds per run")
    parser.add_argument("--reuse", default=None,
                        help="--processes: take the runs an earlier invocation with the same arguments kept in its "
                             "JSON_PATH.partial instead of running them again")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker))
    if args.processes is not None and args.processes < 2:
        parser.error("--processes must be at least 2 (1 process is the baseline every run is compared with)")
    try:
        args.fit_layers = sorted({int(x) for x in args.fit_layers.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--fit-layers {args.fit_layers!r}: a comma list of layer counts")
    if len(args.fit_layers) < 2 or args.fit_layers[0] < 1:
        parser.error("--fit-layers needs at least two distinct positive layer counts (a line needs two points)")
    if args.layers is not None and (args.layers < 1 or not args.processes):
        parser.error("--layers is a positive layer count, for --processes")
    if args.processes and args.preset == "qwen3-0.6b":  # memory per rank: a few short steps
        args.examples = args.examples or 48
        args.min_tokens, args.max_tokens = args.min_tokens or 24, args.max_tokens or 96
        args.max_length = min(args.max_length, 128)
        args.step_tokens = args.step_tokens or 256
        args.steps = args.steps or 3
        args.warmup_steps = 1 if args.warmup_steps == 3 else args.warmup_steps
    big = (args.preset == "qwen3-0.6b" or args.checkpoint) and not args.processes
    args.examples = args.examples or (64 if big else 600)
    args.min_tokens = args.min_tokens or (24 if big else 30)
    args.max_tokens = args.max_tokens or (96 if big else 300)
    args.step_tokens = args.step_tokens or (256 if big else 4096)
    if big and args.warmup_steps == 3:
        args.warmup_steps = 1
    args.contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cadence-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(other processes on this machine slow every contender; compare within one run only)")
    try:
        if args.processes:
            from benchmarks import train_processes

            return train_processes.processes_mode(args, workdir, Path(__file__).resolve(), sys.modules[__name__])
        return checkpoint_mode(args, workdir) if big and not args.throughput else throughput_mode(args, workdir)
    finally:
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
