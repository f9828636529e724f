"""The continuous full fine-tuning engine: setup -> train_file -> evaluate -> save, for an endless stream of files.

A library with no daemon knowledge. `TrainerEngine.setup()` loads the newest
verified checkpoint (falling back past a corrupt one) or the base model, with
optimizer, RNG and the trainer state (global step, the file in progress and the
steps done in it). `train_file()` encodes a file with the model's own chat
template, plans its packed steps deterministically, skips the steps a previous
attempt already finished, and trains the rest; the global step never resets and
the LR schedule is a function of it. Control (pause/stop) is polled through
`TrainingHooks` at step boundaries only.

Run standalone with `cadence train FILE` (see its --help).
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from core.config import CadenceConfig
from core.extras import require
from core.manifest import ManifestCheck, ManifestError, sha256_file
from core.state.lifecycle import AdapterMetadata, write_adapter_metadata as write_record
from core.state.metrics import Metric
from core.state.trainer_state import CurrentFile, LastFile, TrainerState, write_trainer_state
from core.system_metrics import gpu_stats, ram_stats
from trainer import attention, distributed, optim_state
from trainer.compile import decide as decide_compile
from trainer.fast_path import PackedForward, summed_loss, supported as fast_path_supported
from trainer.checkpoint import (CheckpointError, CheckpointInfo, DiskFullError, begin_checkpoint, checked_checkpoints,
                                clean_temp_dirs, prune_checkpoints, warn_corrupt)
from trainer.data import IGNORE_INDEX, DataError, EncodedExample, chat_prompt_and_answer, encode_examples, load_tokenizer, read_jsonl
from trainer.packing import PackedBatch, held_out_indices, pack, plan_steps
from trainer.profiles import apply_profile
from trainer.schedule import lr_factor
from trainer.status import StatusWriter

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
LOGITS_CHUNK_ELEMENTS = 1 << 26  # above this many logits per micro-batch, the LM head runs in recomputed chunks


class NonFiniteLossError(RuntimeError):
    """Loss or gradient became NaN/Inf; the step was not applied and nothing was saved."""


class ConfigMismatchError(RuntimeError):
    """A critical parameter differs from the one the checkpoints were trained with."""


class TrainingHooks:
    """What the engine asks its host at step boundaries. The default host never interrupts."""

    def heartbeat(self, phase: str, global_step: int) -> None:
        """Called at least once per step and during long phases (phase: load|train|eval|checkpoint|paused)."""

    def control(self) -> str | None:
        """'pause', 'stop' or None; polled between optimizer steps."""
        return None

    def wait_while_paused(self) -> str:
        """Block while paused; return 'resume' or 'stop'."""
        return "stop"

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    def local_stop(self) -> bool:
        """This process itself was asked to stop (SIGTERM); on a rank other than 0, the only control it reads."""
        return False


@dataclass
class FileResult:
    file_id: str
    status: str                  # completed | interrupted | already_done
    global_step_start: int
    global_step_end: int
    steps: int
    total_steps: int
    examples: int = 0
    tokens: int = 0
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)
    final_loss: float | None = None
    val_loss: float | None = None
    reason: str | None = None


@dataclass
class FileData:
    train: dict[int, EncodedExample]
    held_out: list[EncodedExample]
    held_out_rows: list[dict]
    truncated: int
    dropped: list[str]


def _device_and_precision(cfg: CadenceConfig) -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        want = cfg.model.dtype
        if want == "auto":
            return torch.device("cuda"), "bf16" if bf16 else "fp16"
        return torch.device("cuda"), {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[want]
    return torch.device("cpu"), "bf16" if cfg.training.cpu_bf16_autocast else "no"


class TrainerEngine:
    def __init__(self, cfg: CadenceConfig, hooks: TrainingHooks | None = None, new_run: bool = False):
        self.cfg = cfg
        self.hooks = hooks or TrainingHooks()
        self.new_run = new_run
        layout = cfg.layout
        self.checkpoint_root = layout.current_model
        self.status = StatusWriter(layout.training_status, layout.metrics)
        self.model = None
        self.tokenizer = None
        self.optimizer = None
        self.accelerator = None
        self.state = TrainerState()
        self._fixed_val: list[EncodedExample] | None = None
        self._step_time_ema: float | None = None
        self._compiled: PackedForward | None = None   # compiled training forward, when this process may compile
        self._compile_steps = False                    # this file's training steps use them
        self._publisher: ThreadPoolExecutor | None = None  # finishes periodic checkpoints in the background
        self._pending = None                           # (future, reason, written_at) of the one in flight
        self._net = None                               # the HF (or peft) model itself, never the DDP/FSDP wrapper
        self.world, self.rank, self.is_main, self.fsdp = 1, 0, True, False

    # ------------------------------------------------------------------ setup
    def setup(self) -> "TrainerEngine":
        cfg = self.cfg
        self.hooks.heartbeat("load", 0)
        device, precision = _device_and_precision(cfg)
        self.accelerator = distributed.make_accelerator(cfg, precision, cpu=device.type == "cpu")
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.fsdp = self.world > 1 and cfg.training.distributed == "fsdp"
        if not self.is_main:
            self.status = _NoStatus()  # status and metrics come from rank 0 only
        if self.is_main:
            clean_temp_dirs(self.checkpoint_root)
        attn = cfg.model.attn_implementation
        if attn == "auto":
            attn = attention.register()
        lora = cfg.training.mode == "lora"
        model, ckpt, optimizer_state = self._load(attn, lora)
        if lora:
            model = self._wrap_lora(model, ckpt)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        model.train()
        use_compile, why = decide_compile(cfg.training.compile, device)
        if use_compile and self.fsdp:
            use_compile, why = False, "FSDP2 shards the layer weights, which the compiled per-layer functions read whole"
        if use_compile:
            use_compile, why = fast_path_supported(model)
        if use_compile:
            self._compiled = PackedForward(model, compile=True, cache_dir=cfg.layout.cache / "torchinductor",
                                           gemm_autotune=cfg.training.compile_gemm_autotune)
        logger.info("torch.compile for training steps: %s (%s)", "available" if use_compile else "off", why)
        self._net = model
        self.optimizer = self._make_optimizer(model)
        # More than one process: the wrapped module's forward is the whole loss, so DDP's reducer and FSDP2's root
        # hooks see every training forward (compiled before wrapping: the compiled functions run inside it).
        wrapped = distributed.LossModule(model, self._loss_of) if self.world > 1 else model
        self.model, self.optimizer = self.accelerator.prepare(wrapped, self.optimizer)
        if self.world > 1:
            logger.info("distributed training: %s on %d processes (this is rank %d)", cfg.training.distributed,
                        self.world, self.rank)
        self.state = TrainerState(critical=cfg.critical_values(), critical_hash=cfg.critical_hash(),
                                  run_started_at=time.time())
        if ckpt is not None:
            self._restore(ckpt, optimizer_state)
        self.status.rewind_metrics(self.global_step)
        self.status.update(state="idle", global_step=self.global_step,
                           last_checkpoint=ckpt.path.name if ckpt else None)
        return self

    def _load(self, attn: str, lora: bool):
        """The model (and optimizer state) of the newest checkpoint that verifies, else the base model.

        The checkpoint's large files are hashed on background threads while the weights and the optimizer
        state load; a checkpoint whose hashes then fail is dropped and the previous one loaded instead."""
        from transformers import AutoModelForCausalLM

        skip: set[str] = set()
        while True:
            source, ckpt, check = self._pick_source(skip)
            weights = self.cfg.resolve(self.cfg.model.base_model) if lora else source
            logger.info("loading model from %s%s", weights, f" + LoRA adapter from {source}" if lora and ckpt else "")
            model = optimizer_state = failure = None
            try:
                model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32, attn_implementation=attn,
                                                             trust_remote_code=self.cfg.model.trust_remote_code)
                self.tokenizer = load_tokenizer(source, self.cfg.model.trust_remote_code)
                opt_files = optim_state.state_files(ckpt.state_dir) if ckpt else []
                optimizer_state = optim_state.load(opt_files) if opt_files else None
            except Exception as exc:
                if check is None:
                    raise
                failure = exc  # corrupt files, if the hashes say so; else a real error, raised below
            if check is not None:
                try:
                    check.result()
                except ManifestError as bad:
                    warn_corrupt(ckpt, bad)
                    skip.add(ckpt.path.name)
                    del model, optimizer_state
                    continue
            if failure is not None:
                raise failure
            return model, ckpt, optimizer_state

    def _pick_source(self, skip: set[str]) -> tuple[Path, CheckpointInfo | None, ManifestCheck | None]:
        for ckpt, check in checked_checkpoints(self.checkpoint_root, skip):
            state = ckpt.trainer_state()
            if state.critical_hash and state.critical_hash != self.cfg.critical_hash() and not self.new_run:
                check.cancel()
                old = state.critical or {}
                diff = {k: (old.get(k), v) for k, v in self.cfg.critical_values().items() if old.get(k) != v}
                raise ConfigMismatchError(
                    "critical config changed since the checkpoints were written: "
                    + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                    + ". Restore the old values, or start a new run explicitly.")
            if self.new_run:
                check.cancel()
                break
            return ckpt.path, ckpt, check
        base = self.cfg.resolve(self.cfg.model.base_model)
        if not (base / "config.json").is_file():
            raise CheckpointError(f"no usable checkpoint under {self.checkpoint_root} and no model at {base}")
        return base, None, None

    def _wrap_lora(self, model, ckpt: CheckpointInfo | None):
        """LoRA mode: a fresh adapter on the base model, or the checkpoint's adapter (trainable) to continue."""
        require("peft", why="training.mode=lora")
        from peft import LoraConfig, PeftModel, get_peft_model

        lc = self.cfg.training.lora
        if ckpt is not None:
            return PeftModel.from_pretrained(model, str(ckpt.path / ADAPTER_DIR), is_trainable=True)
        config = LoraConfig(r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                            bias="none", task_type="CAUSAL_LM")
        torch.manual_seed(self.cfg.training.seed)
        return get_peft_model(model, config)

    def _make_optimizer(self, model) -> torch.optim.Optimizer:
        t = self.cfg.training
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name or name.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        kwargs = dict(lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)
        try:
            # One fused kernel per parameter (CPU and CUDA): the default for-loop AdamW makes ~10 passes over
            # parameters, gradients and both moments, which at 0.6B parameters costs seconds per step on a CPU.
            return torch.optim.AdamW(groups, **kwargs, fused=True)
        except (RuntimeError, ValueError) as exc:
            logger.info("fused AdamW unavailable here (%s); using the for-loop implementation", exc)
            return torch.optim.AdamW(groups, **kwargs)

    def _restore(self, ckpt: CheckpointInfo, optimizer_state: dict | None) -> None:
        state_dir = ckpt.state_dir
        if optimizer_state is not None:
            if self.fsdp:  # the file holds full moments (the single-process format); this rank keeps its shard
                optimizer_state = distributed.shard_optimizer_state(optimizer_state, self.optimizer)
            self.optimizer.load_state_dict(optimizer_state)
        else:
            logger.warning("%s has no optimizer state (pruned); continuing with fresh AdamW moments", ckpt.path.name)
        rng_path = state_dir / "rng.pt"
        if rng_path.is_file():
            rng = torch.load(rng_path, map_location="cpu", weights_only=False)
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if torch.cuda.is_available() and rng.get("cuda") is not None:
                torch.cuda.set_rng_state_all(rng["cuda"])
        saved = ckpt.trainer_state()
        # what the checkpoint recorded replaces the fresh state; the critical values are always this config's
        self.state = self.state.model_copy(update={**{k: getattr(saved, k) for k in saved.model_fields_set},
                                                   "critical": self.cfg.critical_values(),
                                                   "critical_hash": self.cfg.critical_hash()})
        cur = self.state.current_file
        logger.info("resumed from %s (global step %d%s)", ckpt.path.name, self.global_step,
                    f", mid-file {cur.name}" if cur else "")

    @property
    def global_step(self) -> int:
        return self.state.global_step

    # ------------------------------------------------------------------ data
    def _encode(self, rows: list[dict], schema_id: str) -> list[EncodedExample]:
        rows = apply_profile(rows, self.cfg.training.profile, self.cfg.training.seed)
        return encode_examples(rows, self.tokenizer, schema_id, self.cfg.model.max_length)

    def prepare_file(self, path: Path, file_id: str, schema_id: str) -> FileData:
        t = self.cfg.training
        rows = read_jsonl(path)
        if not rows:
            raise DataError(f"{path}: no examples")
        eval_idx = set(held_out_indices(len(rows), t.seed, file_id, t.eval_split_fraction, t.eval_split_max))
        encoded = self._encode(rows, schema_id)
        train, held_out, held_rows, dropped, truncated = {}, [], [], [], 0
        for i, ex in enumerate(encoded):
            line = f"{path.name}:{i + 1}"
            if ex.truncated:
                truncated += 1
                if t.truncation == "error":
                    raise DataError(f"{line}: {ex.original_length} tokens > max_length {self.cfg.model.max_length} (truncation=error)")
                if t.truncation == "drop":
                    dropped.append(f"{line}: dropped, {ex.original_length} tokens > max_length")
                    continue
            if ex.error:
                dropped.append(f"{line}: {ex.error}")
                continue
            if i in eval_idx:
                held_out.append(ex)
                held_rows.append(rows[i])
            else:
                train[i] = ex
        for msg in dropped:
            logger.warning("not trained: %s", msg)
        if not train:
            raise DataError(f"{path}: no trainable examples ({len(dropped)} rejected: {'; '.join(dropped[:3])})")
        return FileData(train, held_out, held_rows, truncated, dropped)

    # ------------------------------------------------------------------ fit
    def train_file(self, path: str | Path, file_id: str | None = None, schema_id: str = "chat_sft_v1",
                   epochs: int | None = None) -> FileResult:
        path = Path(path)

        file_id = file_id or sha256_file(path)
        t = self.cfg.training
        if file_id in self.state.files_done:
            logger.info("%s already trained (id %s); nothing to do", path.name, file_id[:12])
            return FileResult(file_id, "already_done", self.global_step, self.global_step, 0, 0)
        data = self.prepare_file(path, file_id, schema_id)
        epochs = epochs or t.epochs
        lengths = {i: ex.n_tokens for i, ex in data.train.items()}
        plan = plan_steps(lengths, t.micro_batch_tokens, t.gradient_accumulation_steps, t.seed, file_id, epochs)
        if t.max_steps_per_file:
            plan = plan[: t.max_steps_per_file]
        # Decided from the whole plan, so a resumed file runs the same code path as its first attempt.
        self._compile_steps = self._compiled is not None and (t.compile == "on" or len(plan) >= t.compile_min_steps)
        if self._compiled is not None:
            logger.info("%s: %d steps, %s", path.name, len(plan),
                        "compiled layers" if self._compile_steps else f"eager (compile = auto needs >= {t.compile_min_steps} steps)")
        cur = self.state.current_file
        if cur and cur.id == file_id:
            done = cur.steps_done
            if cur.total_steps != len(plan):
                raise RuntimeError(f"{path.name}: resume plan mismatch ({cur.total_steps} != {len(plan)} steps)")
            logger.info("resuming %s at step %d/%d", path.name, done, len(plan))
        else:
            if cur:
                logger.warning("checkpoint was mid-file %s; starting %s instead (the other file keeps its progress record)",
                               cur.name, path.name)
            done = 0
            cur = CurrentFile(id=file_id, name=path.name, steps_done=0, total_steps=len(plan),
                              global_step_start=self.global_step, started_at=time.time())
            self.state.current_file = cur
        result = FileResult(file_id, "completed", cur.global_step_start, self.global_step, done, len(plan),
                            examples=len(data.train), truncated=data.truncated, dropped=data.dropped)
        self.status.update(state="training", file=path.name, file_id=file_id, file_step=done, file_total_steps=len(plan),
                           dropped_examples=len(data.dropped), truncated_examples=data.truncated)
        try:
            self._run_plan(path, data, plan, done, cur, result)
        except BaseException:
            self._settle_quietly()  # a periodic checkpoint already written still gets published
            raise
        return result

    def _run_plan(self, path: Path, data: "FileData", plan, done: int, cur: CurrentFile, result: FileResult) -> None:
        t = self.cfg.training
        last_loss = None
        for step_index in range(done, len(plan)):
            action = self._control()
            if action == "pause":
                self._checkpoint("pause")
                self.status.update(state="paused")
                action = self._wait_while_paused()
                if action != "stop":
                    self.status.update(state="training")
            if action == "stop":
                self._checkpoint("stop")
                result.status, result.reason = "interrupted", "stop requested"
                break
            examples = [[data.train[i] for i in micro] for micro in plan[step_index]]
            last_loss, n_tokens = self._train_step(examples, step_index, len(plan))
            self._settle(wait=False)
            cur.steps_done = step_index + 1
            result.steps = cur.steps_done
            result.tokens += n_tokens
            is_last = step_index + 1 == len(plan)
            if t.eval_steps and self.global_step % t.eval_steps == 0 and not is_last:
                self.evaluate(data)
            if self.global_step % t.save_steps == 0 and not is_last:
                self._checkpoint("periodic")
        result.final_loss = last_loss
        result.global_step_end = self.global_step
        if result.status == "completed":
            metrics = self.evaluate(data)
            result.val_loss = metrics.get("val_loss")
            file_id = result.file_id
            self.state.files_done = (self.state.files_done + [file_id])[-10000:]
            self.state.current_file = None
            self.state.last_file = LastFile(id=file_id, name=path.name, final_loss=last_loss, val_loss=result.val_loss,
                                            global_step_end=self.global_step)
            self._checkpoint("end_of_file")
            self.status.update(state="idle", file=None, file_step=len(plan))

    def _control(self) -> str | None:
        """The operator's request at this step boundary: rank 0 reads it and every rank acts on the same answer
        (a SIGTERM to any rank stops all of them)."""
        if self.world == 1:
            return self.hooks.control()
        local = self.hooks.control() if self.is_main else ("stop" if self.hooks.local_stop() else None)
        return distributed.agree(local, self.accelerator.device)

    def _wait_while_paused(self) -> str:
        if self.world == 1:
            return self.hooks.wait_while_paused()
        while True:  # every rank polls together, so none waits on a collective for the length of a pause
            action = self._control()
            if action is None:
                return "resume"
            if action == "stop":
                return "stop"
            self.hooks.heartbeat("paused", -1)
            time.sleep(0.25)

    def _set_lr(self, file_step: int, file_total: int) -> float:
        t = self.cfg.training
        lr = t.learning_rate * lr_factor(t.lr_schedule, self.global_step, file_step, file_total, t.warmup_steps,
                                         t.wsd_decay_fraction, t.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _loss_sum(self, batch: PackedBatch) -> torch.Tensor:
        """Summed CE over supervised targets, running the LM head on supervised positions only."""
        mask = batch.targets[0] != IGNORE_INDEX
        if self.world > 1:
            return self.model(batch, mask)  # through the DDP/FSDP wrapper (LossModule -> _loss_of)
        return self._loss_of(self._net, batch, mask)

    def _loss_of(self, model, batch: PackedBatch, mask: torch.Tensor) -> torch.Tensor:
        if self._compile_steps and torch.is_grad_enabled():
            return self._compiled.loss_sum(batch, mask, LOGITS_CHUNK_ELEMENTS)
        hidden = model.get_decoder()(**batch.model_kwargs()).last_hidden_state[0]
        head = model.get_output_embeddings()
        return summed_loss(lambda hh, yy: F.cross_entropy(head(hh).float(), yy, reduction="sum"), hidden[mask],
                           batch.targets[0][mask], head.weight.shape[0], LOGITS_CHUNK_ELEMENTS)

    def _train_step(self, micro_batches: list[list[EncodedExample]], file_step: int, file_total: int):
        t = self.cfg.training
        started = time.perf_counter()
        self.hooks.heartbeat("train", self.global_step)
        lr = self._set_lr(file_step, file_total)
        packed = [pack(m) for m in micro_batches]
        # Normalised by the supervised targets of the whole step on every rank (each rank knows the whole plan), and
        # scaled by the world size because DDP and FSDP2 average gradients across ranks: the sum over ranks of each
        # rank's share is then the single-process gradient of the step.
        n_targets = sum(b.n_targets for b in packed)
        n_tokens = sum(b.n_tokens for b in packed)
        local = distributed.local_micro_batches(packed, self.rank, self.world)
        loss_total = 0.0
        self.model.train()
        for i, (batch, weight) in enumerate(local):
            batch = batch.to(self.accelerator.device)
            sync = i == len(local) - 1
            ctx = self.accelerator.no_sync(self.model) if not sync else _nullcontext()
            with ctx, self.accelerator.autocast():
                loss = self._loss_sum(batch) * (weight * self.world / max(1, n_targets))
            if self.world == 1 and not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"loss is {loss.item()} at global step {self.global_step + 1}; step not applied")
            self.accelerator.backward(loss)
            loss_total += loss.item() / self.world
        if self.world > 1:  # one answer on every rank, so every rank raises (or not) at the same step
            loss_total = distributed.all_reduce_sum([loss_total], self.accelerator.device)[0]
            if not math.isfinite(loss_total):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"loss is {loss_total} at global step {self.global_step + 1}; step not applied")
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"gradient norm is {grad_norm} at global step {self.global_step + 1}; step not applied")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step = self.global_step + 1
        self.state.tokens_seen += n_tokens
        self.state.examples_seen += sum(len(m) for m in micro_batches)
        elapsed = time.perf_counter() - started
        self._step_time_ema = elapsed if self._step_time_ema is None else 0.9 * self._step_time_ema + 0.1 * elapsed
        if self.global_step % t.log_steps == 0 or file_step + 1 == file_total:
            self.status.metric(Metric(type="train", global_step=self.global_step, file=self.state.current_file.name,
                                      file_step=file_step + 1, file_total_steps=file_total, loss=loss_total, lr=lr,
                                      grad_norm=grad_norm, tokens=n_tokens, tokens_per_s=n_tokens / elapsed,
                                      step_time_s=elapsed, processes=self.world))
            self.status.update(state="training", global_step=self.global_step, file_step=file_step + 1,
                               file_total_steps=file_total, loss=loss_total, lr=lr, tokens_per_s=n_tokens / elapsed,
                               eta_s=self._step_time_ema * (file_total - file_step - 1), gpu=gpu_stats(), ram=ram_stats())
        self.hooks.heartbeat("train", self.global_step)
        return loss_total, n_tokens

    # ------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def eval_loss(self, examples: list[EncodedExample]) -> float | None:
        if not examples:
            return None
        self.model.eval()
        budget = self.cfg.training.eval_batch_tokens
        total, count, batch, used = 0.0, 0, [], 0
        for ex in examples + [None]:
            if ex is None or (batch and used + ex.n_tokens > budget):
                if batch:
                    packed = pack(batch).to(self.accelerator.device)
                    with self.accelerator.autocast():
                        total += float(self._loss_sum(packed))
                    count += packed.n_targets
                    self.hooks.heartbeat("eval", self.global_step)
                batch, used = [], 0
            if ex is not None:
                batch.append(ex)
                used += ex.n_tokens
        self.model.train()
        return total / count if count else None

    def fixed_validation(self) -> list[EncodedExample]:
        t = self.cfg.training
        if self._fixed_val is None:
            self._fixed_val = []
            if t.fixed_validation_file:
                path = self.cfg.resolve(t.fixed_validation_file)
                if path.is_file():
                    rows = read_jsonl(path)
                    random.Random(42).shuffle(rows)
                    rows = rows[: t.fixed_validation_samples]
                    schema = "completion_v1" if rows and "messages" not in rows[0] else "chat_sft_v1"
                    self._fixed_val = [e for e in self._encode(rows, schema) if not e.error]
                else:
                    logger.warning("fixed validation file %s not found; skipping it", path)
        return self._fixed_val

    def evaluate(self, data: FileData | None = None) -> dict:
        self.hooks.heartbeat("eval", self.global_step)
        metrics: dict = {"type": "eval", "global_step": self.global_step}
        if data is not None and data.held_out:
            metrics["val_loss"] = self.eval_loss(data.held_out)
        fixed = self.fixed_validation()
        if fixed:
            metrics["fixed_val_loss"] = self.eval_loss(fixed)
            metrics.setdefault("val_loss", metrics["fixed_val_loss"])
        if data is not None and data.held_out_rows:
            metrics["preview"] = self.preview(data.held_out_rows[0])
        if len(metrics) > 2:
            self.status.metric(Metric(**metrics))
            self.status.update(val_loss=metrics.get("val_loss"), fixed_val_loss=metrics.get("fixed_val_loss"),
                               preview=metrics.get("preview"))
        return metrics

    @torch.no_grad()
    def preview(self, row: dict, max_new_tokens: int = 48) -> dict | None:
        """Greedy answer of the model to one held-out example (bounded, so it can never hang)."""
        split = chat_prompt_and_answer(row)
        if split is None or not split[0]:
            return None
        messages, golden = split
        answer = self.generate(messages, max_new_tokens)
        return {"prompt": messages[-1]["content"][:500], "golden": golden[:500], "answer": answer[:500],
                "match": answer.strip() == golden.strip()}

    @torch.no_grad()
    def generate(self, messages: list[dict], max_new_tokens: int = 64, logits_processor=None) -> str:
        model = self._net
        model.eval()
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = enc["input_ids"].to(self.accelerator.device)
        if self.fsdp:
            answer = self._greedy_through_root(ids, max_new_tokens, logits_processor)
            model.train()
            return answer
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, logits_processor=logits_processor,
                             pad_token_id=self.tokenizer.pad_token_id)
        model.train()
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def _greedy_through_root(self, ids: torch.Tensor, max_new_tokens: int, logits_processor) -> str:
        """Greedy decoding without a KV cache through the FSDP2 root (every rank runs it: the forwards gather the
        shards); HF generate would call submodules whose shards no hook gathers."""
        eos = self._net.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        start = ids.shape[1]
        for _ in range(max_new_tokens):
            logits = self.model(ids, None, last_logits=True)
            if logits_processor is not None:
                logits = logits_processor(ids, logits)
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            if int(nxt) in eos:
                break
        return self.tokenizer.decode(ids[0, start:], skip_special_tokens=True)

    # ------------------------------------------------------------------ save
    def _checkpoint(self, reason: str) -> CheckpointInfo | None:
        """Save a checkpoint. A periodic one (with training.async_checkpoint) returns None as soon as its files are
        written; it is published when a later step finds its background finish done (or at the next checkpoint)."""
        self._settle(wait=True)
        self.hooks.heartbeat("checkpoint", self.global_step)
        model = self._net
        state = self.state.model_copy(update={"reason": reason, "config_hash": self.cfg.critical_hash()}, deep=True)
        weights = optimizer = None
        if self.fsdp:  # gathered on every rank (collectives), written by rank 0 in the single-process format
            weights = distributed.full_model_state(model)
            optimizer = distributed.full_optimizer_state(self.optimizer)
        if not self.is_main:  # one writer: rank 0; the others wait for it (see the end of this function)
            self._wait_for_rank0(reason)
            return None
        optimizer = optimizer if optimizer is not None else self.optimizer.state_dict()

        def write(tmp: Path, seal) -> None:
            if self.cfg.training.mode == "lora":
                # The adapter (to continue training) plus the merged model at the top level, so the
                # checkpoint loads with AutoModelForCausalLM as is and deploys like a full one.
                model.save_pretrained(tmp / ADAPTER_DIR, safe_serialization=True)
                write_adapter_metadata(tmp / ADAPTER_DIR, self.cfg, state)

                merged = copy.deepcopy(model).merge_and_unload()
                merged.save_pretrained(tmp, safe_serialization=True)
                del merged
            else:
                model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
            self.tokenizer.save_pretrained(tmp)
            seal()  # the model is hashed and flushed while the optimizer state is written
            sd = tmp / "training_state"
            sd.mkdir()
            optim_state.save(optimizer, sd, seal)  # each shard sealed as it is written
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, sd / "rng.pt")
            write_trainer_state(sd, state)

        expected = sum(p.numel() * p.element_size() for p in model.parameters()) * 4  # weights + 2 moments + slack
        min_free = int(self.cfg.safety.min_free_disk_gb * 1e9)
        publication = begin_checkpoint(self.checkpoint_root, self.global_step, write, min_free, expected)
        # logged now, in step order (a background checkpoint that never gets published leaves a line past the
        # step a restart resumes from, which StatusWriter.rewind_metrics removes)
        self.status.metric(Metric(type="checkpoint", global_step=self.global_step, path=publication.final.name,
                                  reason=reason))
        if reason == "periodic" and self._async_checkpoints():
            if self._publisher is None:
                self._publisher = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
            self._pending = (self._publisher.submit(publication.finish), reason, time.perf_counter())
            self._wait_for_rank0(reason)
            return None
        info = self._published(publication.finish(), reason)
        self._wait_for_rank0(reason)
        return info

    def _wait_for_rank0(self, reason: str) -> None:
        """Every rank leaves a checkpoint together, heartbeating while rank 0 writes it."""
        if self.world > 1:
            distributed.wait_for_peers(lambda: self.hooks.heartbeat("checkpoint", self.global_step))

    def _async_checkpoints(self) -> bool:
        setting = self.cfg.training.async_checkpoint
        # On CPU the background hashing and flushing compete with the training steps for the same cores.
        return setting == "on" or (setting == "auto" and self.accelerator.device.type != "cpu")

    def _published(self, info: CheckpointInfo, reason: str) -> CheckpointInfo:
        prune_checkpoints(self.checkpoint_root, self.cfg.training.save_total_limit)
        self.status.update(last_checkpoint=info.path.name)
        self.hooks.on_checkpoint(info)
        logger.info("saved %s (%s)", info.path.name, reason)
        return info

    def _settle(self, wait: bool) -> CheckpointInfo | None:
        """Publish-side bookkeeping of a background checkpoint once it is durable (waiting for it if `wait`).
        An error of the background finish (e.g. disk full) is raised here, on the training thread."""
        if self._pending is None or (not wait and not self._pending[0].done()):
            return None
        future, reason, started = self._pending
        self._pending = None
        info = future.result()
        logger.info("%s durable %.1f s after its files were written", info.path.name, time.perf_counter() - started)
        return self._published(info, reason)

    def _settle_quietly(self) -> None:
        try:
            self._settle(wait=True)
        except Exception:
            logger.exception("background checkpoint failed")

    def save(self, reason: str = "manual") -> CheckpointInfo:
        return self._checkpoint(reason)

    def leave_group(self) -> None:
        """More than one process: wait for every rank at the end of a file, then close the process group (left to
        interpreter shutdown, a gloo group's teardown can hang once its peer is gone)."""
        if self.world > 1:
            import torch.distributed as dist

            self._settle_quietly()
            distributed.wait_for_peers(lambda: self.hooks.heartbeat("checkpoint", self.global_step))
            dist.destroy_process_group()

    def close(self) -> None:
        self._settle_quietly()
        if self._publisher is not None:
            self._publisher.shutdown(wait=True)
            self._publisher = None
        self._compiled = None
        self.model = self.optimizer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write_adapter_metadata(adapter_dir: Path, cfg: CadenceConfig, state: TrainerState) -> None:
    """Per-adapter training metadata, as the original system's LoRA pipeline kept it."""
    lc, t = cfg.training.lora, cfg.training
    last = state.last_file or LastFile()
    meta = {"base_model": str(cfg.resolve(cfg.model.base_model)), "model_name": cfg.model.model_name,
            "lora_r": lc.rank, "lora_alpha": lc.alpha, "lora_dropout": lc.dropout, "target_modules": list(lc.target_modules),
            "learning_rate": t.learning_rate, "epochs": t.epochs, "global_step": state.global_step,
            "training_examples": state.examples_seen, "files_trained": len(state.files_done),
            "final_loss": last.final_loss, "val_loss": last.val_loss,
            "training_time_s": time.time() - float(state.run_started_at or time.time()),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_record(adapter_dir, AdapterMetadata.model_validate(meta))


class _NoStatus:
    """The status writer of a rank other than 0: status and metrics are rank 0's."""

    def update(self, **_fields) -> None:
        pass

    def metric(self, _record: dict) -> None:
        pass

    def rewind_metrics(self, _step: int) -> None:
        pass


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


__all__ = ["TrainerEngine", "TrainingHooks", "FileResult", "NonFiniteLossError", "ConfigMismatchError",
           "DiskFullError", "CheckpointError", "DataError"]
