"""One validated configuration for every Cadence process.

`config.json` at the repository root is parsed once by each entry point into
`CadenceConfig` and passed down; no other module reads the file. Every field
has a description (shown by `cadence config --schema`), unknown keys
are an error, and every problem is reported at once with its key path.

Run as:
    cadence config [--config config.json] [key=value ...]   # print the effective config
    cadence config --schema                                 # field reference
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "config.json"

CRITICAL = {"critical": True}


class ConfigError(ValueError):
    """A config file or override that cannot be used; `problems` lists every one."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    base_dir: str = Field(".", description="Root of all data folders (inbox/, queue/, models/, status/, ...). Relative paths are relative to the config file.")


class ModelConfig(Section):
    base_model: str = Field("models/base", description="Local HF model folder training starts from when no checkpoint exists (relative to base_dir). Changing it after checkpoints exist needs a new run.", json_schema_extra=CRITICAL)
    model_name: str = Field("cadence-tiny", description="Name of the model line being trained; served as the OpenAI model id.", json_schema_extra=CRITICAL)
    max_length: int = Field(4096, ge=16, le=1_048_576, description="Maximum tokens of one example, in training and validation alike.", json_schema_extra=CRITICAL)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weight dtype for training: auto = bf16 on a CUDA GPU that supports it, fp32 otherwise.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field("auto", description="Attention kernel; auto = Cadence's padding-free varlen SDPA for packed training, sdpa for generation.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory (slower).")
    trust_remote_code: bool = Field(False, description="Allow model code from the model folder. Off by default: it executes arbitrary Python.")


class LoraConfig(Section):
    rank: int = Field(16, ge=1, description="LoRA rank r.")
    alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], description="Module names that get adapters (attention + MLP projections).")


class TrainingConfig(Section):
    mode: Literal["full", "lora"] = Field("full", description="full fine-tuning, or LoRA adapters (peft); switching needs a new run.", json_schema_extra=CRITICAL)
    learning_rate: float = Field(2e-5, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to norms and biases).")
    adam_beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.95, gt=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 disables clipping.")
    lr_schedule: Literal["constant", "wsd"] = Field("constant", description="constant: warmup then constant for the endless stream of files. wsd: warmup, stable, and a linear cool-down over the last wsd_decay_fraction of every file (the file-end checkpoint is the cooled one).")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup over the first global steps of the run (never repeated per file).")
    wsd_decay_fraction: float = Field(0.1, ge=0, le=1, description="wsd: share of each file's steps spent cooling down.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="wsd: LR at the end of the cool-down as a share of the peak.")
    micro_batch_tokens: int = Field(16384, ge=16, description="Tokens in one padding-free packed micro-batch (must be >= model.max_length).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: int = Field(1, ge=1, le=1000, description="Passes over each file (a job sidecar may override).")
    seed: int = Field(42, description="Seed for shuffling, splits and init of anything random.")
    log_steps: int = Field(1, ge=1, description="Write training_status.json and a metrics.jsonl line every N steps.")
    eval_steps: int = Field(50, ge=0, description="Evaluate on the held-out split and fixed validation set every N steps (0 = only at file end).")
    save_steps: int = Field(1000, ge=1, description="Checkpoint every N global steps, and always at the end of a file.")
    async_checkpoint: Literal["auto", "on", "off"] = Field("auto", description="Periodic checkpoints: on = training goes on as soon as the files are written, while a background thread hashes, fsyncs and publishes them (the checkpoint exists, and counts for resume, once durable); auto = on when training on a GPU (the CPU is idle then), off on CPU, where the background work would only slow the next steps. End-of-file, pause and stop checkpoints always finish before training moves on.")
    save_total_limit: int = Field(5, ge=1, description="Checkpoints kept by the trainer's own rolling retention (the newest complete one is never deleted).")
    eval_split_fraction: float = Field(0.05, ge=0, lt=1, description="Share of each file held out for evaluation (capped by eval_split_max).")
    eval_split_max: int = Field(500, ge=0, description="Most held-out rows per file.")
    eval_batch_tokens: int = Field(16384, ge=16, description="Tokens per evaluation micro-batch.")
    fixed_validation_file: str | None = Field(None, description="JSONL (chat_sft_v1 or completion_v1) evaluated at every eval; relative to base_dir.")
    fixed_validation_samples: int = Field(100, ge=1, description="Rows of the fixed validation file used per eval (seeded sample).")
    truncation: Literal["truncate", "drop", "error"] = Field("truncate", description="Examples over max_length: truncate on the right, drop the example, or fail the file.")
    profile: Literal["none", "emoji_think", "regime3"] = Field("none", description="Data profile applied to every example before tokenisation.")
    cpu_threads: int | None = Field(None, ge=1, description="Intra-op threads of a one-process trainer on CPU. None = torch's default (one per core) less comparison.torch_threads when the comparison engine scores on CPU beside it (it does, on box A): OpenMP threads that outnumber the cores make every step wait for a preempted thread (on 2 cores, 2 trainer threads beside the 1-thread scorer: median step 0.12 s but p90 0.77 s and 2.4 steps/s). Ignored on a GPU and with more than one process (each rank gets cores / ranks).")
    cpu_bf16_autocast: bool = Field(False, description="On CPU, run forward/backward under bf16 autocast (weights stay fp32).")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the decoder layers for training steps (fuses norms, RoPE and SwiGLU; attention stays the varlen kernel): ~15% faster steps on CPU, for a one-off cost of seconds per trainer process (kernels cached on disk under .cache/). on = every file; auto = files of at least compile_min_steps optimizer steps, where the cost pays off; off = eager. Needs a compiler backend (a C++ compiler on CPU, Triton on CUDA), else eager with a warning; auto is off with gradient checkpointing.")
    compile_gemm_autotune: bool = Field(True, description="With compile on CPU: let Inductor time its own C++ GEMM kernels (which can fuse the elementwise work after a matmul) against ATen's for every matmul of the layers and keep the faster; ~4% faster steps on the tiny model here, a few more seconds of compile on a cold kernel cache.")
    compile_min_steps: int = Field(200, ge=1, description="compile = auto: compile a file's training steps when its plan has at least this many optimizer steps.")
    max_steps_per_file: int | None = Field(None, ge=1, description="Cap on optimizer steps per file (for smoke runs).")
    distributed: Literal["none", "ddp", "fsdp"] = Field("none", description="Training on more than one process (GPU): none = one process; ddp = data parallel, every rank holds the whole model and optimizer (accelerate's DDP); fsdp = FSDP2 through accelerate (full shard, reshard after forward, bf16/fp16 mixed precision where the device has it): weights, gradients and AdamW moments sharded across ranks. Either way each optimizer step's micro-batches are shared out across ranks and the update equals one process's (up to reduction order); checkpoints keep the single-process format.")
    num_processes: int = Field(1, ge=1, le=1024, description="Training processes on this machine (one per GPU) when distributed is ddp or fsdp; the daemon starts and supervises all of them as one group.")
    accelerate_config: str | None = Field(None, description="An `accelerate config` YAML for training across several machines (num_machines, machine_rank, main_process_ip/port); the daemon then launches through `accelerate launch --config_file` instead of starting the ranks itself. Relative to base_dir.")
    master_port: int | None = Field(None, ge=1024, le=65535, description="TCP port of the rank-0 rendezvous on this machine (127.0.0.1); None = a free port picked at each launch.")
    distributed_timeout: int = Field(1800, ge=10, description="Seconds a rank waits in a collective for its peers before failing (torch.distributed's process-group timeout).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings, used when mode = lora.")


class DaemonConfig(Section):
    poll_interval: float = Field(30.0, gt=0, description="Seconds between inbox scans when inotify is unavailable (and as a safety net).")
    settle_seconds: float = Field(2.0, ge=0, description="A file whose size and mtime did not change for this long is complete.")
    default_schema: str = Field("chat_sft_v1", description="Dataset spec for files without a job sidecar.")
    default_priority: Literal["high", "normal", "low"] = Field("normal", description="Queue priority for files without a job sidecar.")
    shutdown_timeout: float = Field(120.0, gt=0, description="SIGTERM: seconds to finish the step and checkpoint before the child is killed.")
    release_model_on_pause: bool = Field(False, description="Pause frees the model from memory (the child exits after its checkpoint) instead of keeping it loaded.")
    heartbeat_interval: float = Field(1.0, gt=0, description="Seconds between heartbeats while the child is busy outside a step (load, eval).")
    loop_interval: float = Field(1.0, gt=0, description="Supervisor loop tick in seconds.")
    inbox_observer: Literal["auto", "inotify", "polling"] = Field("auto", description="How the inbox is watched: auto = inotify (close-write events) with polling as fallback; polling = scans every poll_interval only.")
    orphan_sidecar_seconds: float = Field(300.0, ge=0, description="A NAME.job.json whose NAME.jsonl has not arrived after this long is moved to queue/rejected/.")


class ValidationConfig(Section):
    max_line_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="QUICK: longest accepted line in bytes.")
    max_file_bytes: int = Field(2 * 1024 ** 3, ge=1024, description="QUICK: largest accepted file in bytes.")
    max_json_depth: int = Field(32, ge=2, description="QUICK: deepest accepted JSON nesting.")
    deep_on_arrival: bool = Field(False, description="Run DEEP checks on every arriving file, not only on request.")
    policies: dict[str, Literal["error", "warning", "off"]] = Field(default_factory=dict, description="Per-check policy overrides, e.g. {\"near_duplicate\": \"error\"}.")
    max_truncated_share: float = Field(0.05, ge=0, le=1, description="STANDARD: reject when more than this share of examples exceed max_length.")
    report_lines_per_rule: int = Field(20, ge=1, description="Reports list the first N lines per rule and count the rest.")
    standard_on_arrival: bool = Field(False, description="Also run STANDARD (tokenizer + chat template) when a file arrives, not only before training.")


class QueueConfig(Section):
    max_attempts: int = Field(3, ge=1, description="Failed attempts before a file goes to failed/.")
    retry_backoff_seconds: float = Field(60.0, ge=0, description="Wait before retrying a failed file (doubles each attempt).")
    completed_retention_days: float = Field(14.0, ge=0, description="Completed files older than this may be removed by the disk manager.")


class SafetyConfig(Section):
    watchdog_interval: float = Field(2.0, gt=0, description="Seconds between watchdog checks of the daemon pid.")
    max_restarts: int = Field(3, ge=1, description="Restarts allowed per restart_window before the watchdog stays down and says why.")
    restart_window: float = Field(300.0, gt=0, description="Crash-loop window in seconds.")
    crash_loop_faults: int = Field(3, ge=1, description="System faults in a row (a trainer killed from outside, or an OOM, segfault, hang or error before the file's first training step) after which the daemon pauses itself with an alert naming the cause; the file stays queued with its attempts untouched. An exit with checkpoint progress, a finished or stopped file, or a fault that is the file's starts the count again.")
    system_fault_backoff_seconds: float = Field(10.0, ge=0, description="Wait before the next trainer start after a system fault; doubles with each fault in a row.")
    system_fault_backoff_max_seconds: float = Field(300.0, ge=0, description="Cap on the system-fault backoff.")
    stuck_timeout: float = Field(900.0, gt=0, description="No heartbeat progress for this long in a training step: the child is stuck.")
    stuck_timeout_eval: float = Field(1800.0, gt=0, description="Stuck limit during evaluation.")
    stuck_timeout_checkpoint: float = Field(1800.0, gt=0, description="Stuck limit while writing a checkpoint.")
    stuck_timeout_load: float = Field(1800.0, gt=0, description="Stuck limit while the child starts (imports, model load, STANDARD validation).")
    min_free_disk_gb: float = Field(10.0, ge=0, description="Refuse to start a file or write a checkpoint below this much free disk.")
    warn_free_disk_gb: float = Field(50.0, ge=0, description="Warn (and let the disk manager free space) below this.")


class RetentionConfig(Section):
    keep_latest: int = Field(5, ge=1, description="Newest checkpoints always kept.")
    keep_best: int = Field(2, ge=0, description="Best-ranked checkpoints always kept.")
    keep_optimizer_latest: int = Field(2, ge=1, description="Checkpoints that keep their optimizer state (the newest ones).")
    keep_versions: int = Field(10, ge=1, description="Consolidated versions kept under models/versions/.")
    min_age_hours: float = Field(36.0, ge=0, description="Checkpoints younger than this are never removed by the disk manager.")
    max_total_gb: float | None = Field(None, gt=0, description="Cap on the total size of models/current_model.")
    disk_check_interval: float = Field(300.0, gt=0, description="Seconds between the lifecycle worker's free-space checks (the disk manager frees space below safety.warn_free_disk_gb).")
    log_retention_days: float = Field(14.0, ge=0, description="Rotated logs (logs/*.log.N, *.gz) older than this may be removed by the disk manager.")
    backup_keep: int = Field(3, ge=1, description="Backups kept under models/backups/ (newest first; older ones go by count and age).")
    backup_max_age_days: float = Field(30.0, ge=0, description="Backups older than this are removed (the newest one is always kept).")


class ComparisonConfig(Section):
    enabled: bool = Field(True, description="Score every new checkpoint.")
    interval: float = Field(60.0, gt=0, description="Seconds between looks for unscored checkpoints.")
    watch_interval: float = Field(2.0, gt=0, description="Seconds between cheap looks at the checkpoint folder; a newly published checkpoint starts a lifecycle pass at once instead of waiting for the next interval.")
    validation_samples: int = Field(100, ge=1, description="Rows of the fixed validation set scored per checkpoint.")
    rule: Literal["paired", "margin"] = Field("paired", description="Champion rule. paired: a candidate is promoted when a per-item paired test on the same items (ladder rungs, files trained since the deployed version, validation/eval files, anchor) shows it better on some set at `confidence` and no guarded set regresses (management/paired_test.py). margin: the old rule, primary_metric better by `margin` and anchor loss within guard_tolerance.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Paired rule: family-wise confidence of 'better' and of 'regressed' (Bonferroni over the tests of each kind).")
    accuracy_tolerance: float = Field(0.05, ge=0, le=1, description="Paired rule: a significant drop in exact match of more than this (absolute) on a guarded set (every ladder rung, eval files) blocks promotion.")
    keep_mastered: bool = Field(True, description="Paired rule: a candidate that reads under both data_manager.threshold and the deployed version on a level a skill has passed (a ladder rung below its current level) is refused (the mastery guard): a passed level the served version holds stays at or above the bar, one it does not hold yet never reads lower. false = only a significant drop (accuracy_tolerance) blocks.")
    ladder_items: int = Field(24, ge=0, description="Items scored per ladder rung (the first N of the rung's fixed items, the same for every checkpoint; at most data_manager.eval_count). 0 = no ladder (and no curriculum feed).")
    trained_files: int = Field(4, ge=0, description="Paired rule: the last N files trained since the deployed version contribute their held-out rows as item sets (loss); 0 = none.")
    trained_rows: int = Field(16, ge=1, description="Held-out rows scored per trained file (the first N of the trainer's held-out split).")
    primary_metric: str = Field("val_loss", description="Metric the ranking (and the margin rule) uses (val_loss, or accuracy:<skill>).")
    margin: float = Field(0.01, ge=0, description="Margin rule: relative improvement over the deployed version needed to become champion.")
    anchor_file: str | None = Field(None, description="Fixed anchor set (JSONL) for the forgetting guard; relative to base_dir.")
    guard_tolerance: float = Field(0.05, ge=0, description="Largest allowed relative regression of anchor loss (margin rule); paired rule: of the mean per-item loss of a guarded loss set (anchor, validation, trained files) when the regression is significant.")
    max_new_tokens: int = Field(256, ge=1, description="Cap on the generation budget of accuracy evals; each set gets 1.5x its longest expected answer + 8 tokens, up to this (a set whose answers do not fit is logged as such).")
    nice: int = Field(10, ge=0, le=19, description="OS niceness of the scoring process so training is not starved.")
    validation_file: str | None = Field(None, description="Validation JSONL scored for val_loss (supervised tokens only); default: training.fixed_validation_file. Relative to base_dir.")
    eval_samples: int = Field(50, ge=0, description="Rows of each eval file (eval_files) exact-matched for each checkpoint (skills use the ladder: ladder_items per rung); 0 = no accuracy evals at all, the ladder included.")
    eval_files: list[str] = Field(default_factory=list, description="Extra eval sets (chat JSONL; the last assistant turn is the expected answer, exact match); relative to base_dir.")
    feed_curriculum: bool = Field(True, description="Record each skill's accuracy (at the level tested) in the data manager's curriculum.")
    measure_latency: bool = Field(False, description="Also time greedy generation (seconds per generated token) on the eval prompts.")
    device: str = Field("cpu", description="Where scoring runs: cpu, cuda, cuda:1, or auto (a GPU when present). Keep it off the training GPU.")
    torch_threads: int | None = Field(1, ge=1, description="CPU threads for scoring (default 1, so training keeps the other cores); None = torch's choice.")


class DeployTarget(Section):
    name: str = Field(..., description="Target label.")
    destination: str = Field(..., description="/local/path, host:/path (ssh) or rsync://host/module/path.")
    server_url: str = Field("http://127.0.0.1:8765", description="Inference server that loads what lands there.")
    server_path: str | None = Field(None, description="The destination folder as the target's server sees it (default: destination, for local targets; set it for host:/path and rsync:// targets).")


class DeployConfig(Section):
    enabled: bool = Field(True, description="Deploy champions automatically.")
    targets: list[DeployTarget] = Field(default_factory=lambda: [DeployTarget(name="local", destination="models/deployed")], description="Where champions go; the first is primary.")
    rsync_timeout: float = Field(300.0, gt=0, description="Seconds before an rsync is killed.")
    health_window_seconds: float = Field(10.0, ge=0, description="Watch error rate and latency this long before promoting.")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Error share in the health window that triggers rollback.")
    keep_remote_versions: int = Field(3, ge=2, description="Versions kept on each target (never the active or previous one).")
    verify_staging: bool = Field(True, description="Check the manifest (blake3 per file) of a local target's staged copy before it is renamed into place (the server checks again when it loads).")
    link_local: bool = Field(True, description="A local target on the same filesystem as models/versions gets hard links (rsync --link-dest) instead of byte copies; versions are immutable, so the staged check is left to the server's.")
    health_probe_interval: float = Field(0.5, gt=0, description="Seconds between probe requests during the health window.")
    max_latency_seconds: float | None = Field(None, gt=0, description="Median probe latency in the health window above this triggers rollback (None = latency not judged).")
    request_timeout: float = Field(600.0, gt=0, description="Seconds to wait for the target server's load or rollback answer.")


# Inference keys only the builtin engine implements (max_batch_size maps to vLLM's --max-num-seqs; the sampling
# defaults and max_tokens_cap are applied by the front for both engines).
VLLM_DEFAULT_ARGS = ("--enforce-eager", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                     "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}')
BUILTIN_ONLY_KEYS = ("max_queue", "torch_threads", "think_penalty", "post_stop_penalty")


class InferenceConfig(Section):
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8765, ge=1, le=65535, description="Port of the OpenAI-compatible server.")
    model_path: str | None = Field(None, description="Model served at start (relative to base_dir); default: model.base_model, served as version \"base\". Later versions arrive via POST /admin/models/load.")
    max_batch_size: int = Field(32, ge=1, description="Requests decoded together in one forward pass.")
    max_queue: int = Field(256, ge=1, description="Waiting requests beyond which the server answers 429.")
    max_tokens_cap: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when the request gives none.")
    default_temperature: float = Field(0.7, ge=0, description="Sampling temperature when the request gives none.")
    default_top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling when the request gives none.")
    api_keys: list[str] = Field(default_factory=list, description="Bearer keys for /v1/*; empty = open (loopback only by default).")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names requests may be addressed to besides localhost/127.0.0.1/::1 and a specific bind address (DNS-rebinding guard; other Hosts get 400). Add box B's name when box A reaches it by name; \"*\" turns the check off.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body; larger ones are answered 413 while they stream in (a declared Content-Length before any byte is read).")
    read_timeout: float = Field(30.0, gt=0, description="Seconds a client may take to send a request's headers (from connecting) and, separately, its body; a slower or half-open connection is closed (408 for a stalled body).")
    keep_alive_timeout: float = Field(5.0, gt=0, description="Seconds an idle keep-alive connection stays open between two requests.")
    load_roots: list[str] = Field(default_factory=list, description="Folders (relative to base_dir) POST /admin/models/load may load from, besides models/ and the local deploy targets' folders; a path resolving outside all of them, or a symlinked folder or file, is refused.")
    drain_timeout: float = Field(30.0, ge=0, description="SIGTERM: seconds to let in-flight requests finish.")
    think_penalty: bool = Field(False, description="Apply the think-tag logit penalty by default.")
    post_stop_penalty: bool = Field(False, description="Apply the post-stop-emoji penalty by default.")
    require_manifest: bool = Field(True, description="Refuse to load (via /admin/models/load) a folder without a manifest.json; the start-up model may lack one (a warning is logged).")
    max_model_len: int | None = Field(None, ge=16, description="Context limit (prompt + generated tokens); default: the model's max_position_embeddings.")
    smoke_prompt: str = Field("Say hello.", description="Chat prompt a new version must generate from before it may serve.")
    smoke_tokens: int = Field(8, ge=1, le=256, description="Tokens generated by the smoke prompt.")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads torch uses for generation (default: torch's choice, one per core).")
    engine: Literal["builtin", "vllm"] = Field("builtin", description="What generates tokens. builtin: Cadence's own batched PyTorch engine in this process (no extra install; the CPU demo). vllm: each served version runs as a vLLM OpenAI server on a loopback port started from inference.vllm_python (scripts/setup.sh --vllm); this server stays the one address and owns versions, auth, the swap and /metrics, and proxies the OpenAI routes to the version that accepted each request.")
    vllm_python: str = Field(".venv-vllm/bin/python", description="engine=vllm: the Python of the vLLM venv (relative to base_dir, else the repository); its `-m vllm.entrypoints.openai.api_server` serves each version.")
    vllm_args: list[str] = Field(default_factory=lambda: list(VLLM_DEFAULT_ARGS), description="engine=vllm: extra arguments of every vLLM server. Default: --enforce-eager (skips graph capture/compilation: start-up ~1 min instead of ~2.5 on CPU; on a GPU drop it for CUDA graphs), the hermes tool-call parser (Qwen's tool format: tools and tool_choice work), and JSON structured output without free whitespace (a small model otherwise pads it to max_tokens). On a GPU add e.g. --gpu-memory-utilization 0.45 so the standby fits beside the active version during a swap.")
    vllm_env: dict[str, str] = Field(default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"}, description="engine=vllm: environment added to every vLLM server. VLLM_CPU_KVCACHE_SPACE = GiB of KV cache per server on CPU; VLLM_ENFORCE_STRICT_TOOL_CALLING=0 makes a named or required tool_choice generate schema-constrained compact JSON (vLLM's JSON tool path) instead of the hermes tag grammar, whose free whitespace a small model fills up to max_tokens.")
    vllm_start_timeout: float = Field(600.0, gt=0, description="engine=vllm: seconds a new version's vLLM server may take to answer /health before the load is refused.")

    @model_validator(mode="after")
    def _engine_keys(self) -> "InferenceConfig":
        # Never pretend: a key the chosen engine does not honour is refused by name when it asks for something other
        # than its default (a config dumped whole, defaults included, still loads).
        def changed(keys):
            return [k for k in keys if getattr(self, k) != type(self).model_fields[k].get_default(call_default_factory=True)]

        if self.engine == "vllm":
            ignored = changed(BUILTIN_ONLY_KEYS)
            if ignored:
                raise ValueError(f"inference.engine=vllm does not honour {', '.join('inference.' + k for k in ignored)} "
                                 "(builtin engine only); remove them or use engine=builtin")
        else:
            ignored = changed(("vllm_python", "vllm_args", "vllm_env", "vllm_start_timeout"))
            if ignored:
                raise ValueError(f"{', '.join('inference.' + k for k in ignored)} only apply to inference.engine=vllm "
                                 f"(engine is {self.engine!r})")
        return self


class MonitorConfig(Section):
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8080, ge=1, le=65535, description="Port of the monitor API and web UI.")
    upload_max_bytes: int = Field(256 * 1024 * 1024, ge=1, description="Largest JSONL accepted by the upload endpoint.")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest body of the JSON endpoints (the upload endpoint has upload_max_bytes); larger ones are answered 413 while they stream in.")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names requests may be addressed to besides localhost/127.0.0.1/::1 and a specific bind address (DNS-rebinding guard; other Hosts get 400); \"*\" turns the check off.")
    read_timeout: float = Field(30.0, gt=0, description="Seconds a client may take to send a request's headers (from connecting) and, separately, its body; a slower or half-open connection is closed (408 for a stalled body).")
    keep_alive_timeout: float = Field(5.0, gt=0, description="Seconds an idle keep-alive connection stays open between two requests.")
    stale_after_seconds: float = Field(30.0, gt=0, description="A status file older than this with a dead pid is shown as not running.")
    poll_interval: float = Field(0.2, gt=0, le=5, description="Seconds between looks at metrics.jsonl, events.jsonl and the status file for the live feed (SSE).")
    ema_smoothing: float = Field(0.95, ge=0, lt=1, description="Smoothing factor of the EMA curves of train and validation loss (TensorBoard-style, debiased).")
    history_max_points: int = Field(2000, ge=10, le=200_000, description="Default and largest point budget per chart series; longer histories are min-max downsampled.")
    replay_buffer: int = Field(20000, ge=100, description="Live-feed messages kept for Last-Event-ID replay after a reconnect.")
    system_sample_interval: float = Field(2.0, gt=0, description="Seconds between CPU/RAM/GPU samples for the system charts.")
    inference_timeout: float = Field(2.0, gt=0, description="Seconds to wait for box B's /v1/models and /metrics before showing it as unreachable.")


class SkillConfig(Section):
    name: str = Field(..., description="Skill id.")
    url: str = Field(..., description="Base URL of the skill server.")
    builtin: bool = Field(True, description="Started by start_all.sh from data_manager/skills.")


class DataManagerConfig(Section):
    enabled: bool = Field(True, description="Generate curriculum data when the queue runs low.")
    min_queue_depth: int = Field(2, ge=0, description="Generate when fewer files than this are queued.")
    cooldown_seconds: float = Field(180.0, ge=0, description="Least time between two generated batches.")
    batch_size: int = Field(400, ge=1, description="Examples per generated file.")
    eval_count: int = Field(50, ge=1, description="Held-out eval examples per skill and level.")
    threshold: float = Field(0.8, ge=0, le=1, description="Mean accuracy that masters a level.")
    window: int = Field(3, ge=1, description="Evals at the current level averaged for the threshold.")
    hold_while_forgotten: bool = Field(True, description="A skill whose current level is mastered stays there while a lower level's ladder accuracy (the mean of its last `window` readings) is below the threshold (those levels get the rehearsal share meanwhile); false = level up on the current level alone.")
    replay_fraction: float = Field(0.5, ge=0, lt=1, description="Share of each generated batch drawn from the other skills at their current levels (rehearsal against forgetting), counted in supervised (answer) tokens, what the loss is made of: a skill with short answers gets more rows, within 8x the row share; 0 = one skill per file.")
    rehearsal_fraction: float = Field(0.15, ge=0, lt=1, description="Share of each generated batch drawn from the lower levels (below the current one) of every skill, weighted by forgetting: a level whose accuracy on its ladder rung (mean of the last `window` readings) is under threshold + rehearsal_margin gets 1 + rehearsal_boost * (threshold + rehearsal_margin - accuracy) times the weight of one above it; 0 = no rehearsal of lower levels.")
    carry_fraction: float = Field(0.25, ge=0, lt=1, description="Share of a skill's current-level rows (its own files, and its replay in the other skills' files) drawn from the level just below instead, so the level just passed stays in every step while the next is learned: with the current level only, the tiny model went from syllo level 6 to 7 (3-word to 4-word puzzles) and answered 3-word puzzles with four words within ~100 steps; 0 = the current level only.")
    rehearsal_boost: float = Field(10.0, ge=0, description="How much more a lower level is rehearsed per point of accuracy short of threshold + rehearsal_margin (see rehearsal_fraction).")
    rehearsal_margin: float = Field(0.1, ge=0, le=1, description="A lower level is rehearsed more as its ladder accuracy (the mean of its last `window` readings) falls short of threshold + this, so it is pulled back up before it falls under the bar: weight 1 + rehearsal_boost * (threshold + margin - accuracy). Only a level under the threshold counts as forgotten (the hold, the growing rehearsal share); 0 = only those.")
    rehearsal_max_fraction: float = Field(0.6, ge=0, lt=1, description="The share of lower levels grows with forgetting, from rehearsal_fraction (nothing forgotten) to this (the summed shortfall below the threshold of every forgotten lower level reaches the threshold itself, e.g. one level at 0 % accuracy), so a collapsed level gets back most of a batch instead of a sliver; set it equal to rehearsal_fraction for a fixed share.")
    file_seconds: float = Field(90.0, ge=0, description="Size generated files to about this many seconds of training at the rate measured on recently completed generated files (never more than batch_size samples), so a level-up waits at most about one file before next-level data trains; 0 = always batch_size.")
    min_batch_size: int = Field(64, ge=1, description="Fewest samples of the batch's own skill in a time-sized file (file_seconds).")
    priority: Literal["high", "normal", "low"] = Field("low", description="Queue priority of generated files (files people drop at normal go first).")
    min_distinct_ratio: float = Field(0.5, ge=0, le=1, description="Quality gate: a batch needs at least this share of the distinct prompts expected from uniform sampling (the batch size, or fewer when a level declares a small problem space).")
    request_timeout: float = Field(10.0, gt=0, description="Seconds per skill-server request.")
    request_retries: int = Field(2, ge=0, description="Retries of a skill-server request on connection errors, timeouts and 5xx.")
    local_fallback: bool = Field(True, description="Generate a built-in skill in process when its server does not answer.")
    skills: list[SkillConfig] = Field(default_factory=lambda: [
        SkillConfig(name="binary", url="http://127.0.0.1:8090"),
        SkillConfig(name="syllo", url="http://127.0.0.1:8091"),
    ], description="Skills in rotation.")


class AuthConfig(Section):
    admin_token_file: str = Field("control/admin.token", description="File holding the token mutating endpoints require (created 0600 on first start); relative to base_dir. CADENCE_ADMIN_TOKEN overrides.")


class CadenceConfig(Section):
    paths: PathsConfig = Field(default_factory=PathsConfig, description="Where data lives.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model being trained.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training engine.")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="Training daemon.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Spec and data validators.")
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Priority queue on disk.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig, description="Watchdog, anti-stuck, disk guards.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="What is kept on disk.")
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig, description="Checkpoint scoring and champion rule.")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Deployment orchestrator.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Inference server (box B).")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Monitor API and web UI.")
    data_manager: DataManagerConfig = Field(default_factory=DataManagerConfig, description="Curriculum data generation.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Tokens for mutating endpoints.")

    _config_dir: Path = REPO_ROOT

    @model_validator(mode="after")
    def _cross_checks(self) -> "CadenceConfig":
        if self.training.micro_batch_tokens < self.model.max_length:
            raise ValueError(
                f"training.micro_batch_tokens ({self.training.micro_batch_tokens}) must be >= model.max_length ({self.model.max_length})")
        t = self.training
        if t.distributed == "none" and t.num_processes > 1:
            raise ValueError(f"training.num_processes = {t.num_processes} needs training.distributed = ddp or fsdp")
        if t.distributed == "none" and t.accelerate_config:
            raise ValueError("training.accelerate_config needs training.distributed = ddp or fsdp")
        if t.distributed == "fsdp" and t.mode == "lora":
            raise ValueError("training.distributed = fsdp with training.mode = lora is not supported (use ddp: "
                             "the adapters are small, sharding them saves nothing)")
        return self

    @property
    def layout(self) -> "Layout":
        return Layout.from_base(resolve_under(self._config_dir, self.paths.base_dir))

    def resolve(self, path: str | os.PathLike) -> Path:
        """A config path made absolute: relative paths live under base_dir."""
        return resolve_under(self.layout.base_dir, path)

    def critical_values(self) -> dict[str, Any]:
        return {key: value for key, value in _walk(self) if key in CRITICAL_KEYS}

    def critical_hash(self) -> str:
        blob = json.dumps(self.critical_values(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def resolve_under(root: Path, path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(root) / p).resolve()


@dataclass(frozen=True)
class Layout:
    """Every folder and state file of DESIGN.md, derived from base_dir."""

    base_dir: Path

    @classmethod
    def from_base(cls, base_dir: Path) -> "Layout":
        return cls(Path(base_dir).resolve())

    inbox = property(lambda s: s.base_dir / "inbox")
    queue = property(lambda s: s.base_dir / "queue")
    models = property(lambda s: s.base_dir / "models")
    current_model = property(lambda s: s.base_dir / "models" / "current_model")
    versions = property(lambda s: s.base_dir / "models" / "versions")
    status = property(lambda s: s.base_dir / "status")
    control = property(lambda s: s.base_dir / "control")
    logs = property(lambda s: s.base_dir / "logs")
    pids = property(lambda s: s.base_dir / ".pids")
    cache = property(lambda s: s.base_dir / ".cache")  # rebuildable caches (torch.compile's kernels)
    emergency_stop = property(lambda s: s.base_dir / ".stop")
    training_status = property(lambda s: s.base_dir / "status" / "training_status.json")
    metrics = property(lambda s: s.base_dir / "status" / "metrics.jsonl")
    events = property(lambda s: s.base_dir / "status" / "events.jsonl")
    comparisons = property(lambda s: s.base_dir / "status" / "comparisons.json")
    deployments = property(lambda s: s.base_dir / "status" / "deployments.jsonl")
    # model-lifecycle and curriculum records (owner: core/state/deployment.py, ledger.py, curriculum.py, lifecycle.py)
    deployment_state = property(lambda s: s.base_dir / "status" / "deployment_state.json")
    comparison_validation = property(lambda s: s.base_dir / "status" / "comparison_validation.jsonl")
    curriculum = property(lambda s: s.base_dir / "status" / "curriculum.json")
    data_manager_state = property(lambda s: s.base_dir / "status" / "data_manager.json")
    evals = property(lambda s: s.base_dir / "status" / "evals")  # the held-out ladder's rungs
    ladder_index = property(lambda s: s.base_dir / "status" / "evals" / "ladder.json")  # core.state.curriculum.LADDER_INDEX_NAME
    protected = property(lambda s: s.base_dir / "models" / "current_model" / "protected.json")
    backups = property(lambda s: s.base_dir / "models" / "backups")
    previous_runs = property(lambda s: s.base_dir / "models" / "previous_runs")

    def queue_dir(self, state: str) -> Path:
        return self.queue / state

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def ensure(self) -> "Layout":
        from core.state.queue_records import STATES  # the queue's folders, named once

        for d in (self.inbox, self.models, self.status, self.control, self.logs, self.pids):
            d.mkdir(parents=True, exist_ok=True)
        for state in STATES:
            self.queue_dir(state).mkdir(parents=True, exist_ok=True)
        return self


def _walk(model: BaseModel, prefix: str = ""):
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from _walk(value, key + ".")
        else:
            yield key, value


def _critical_keys(cls: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _critical_keys(ann, f"{prefix}{name}.")
        elif (field.json_schema_extra or {}).get("critical"):
            keys.add(f"{prefix}{name}")
    return keys


CRITICAL_KEYS = frozenset(_critical_keys(CadenceConfig))


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (["training", "learning_rate"], 1e-4); values parse as JSON, else stay strings."""
    if "=" not in item:
        raise ConfigError("override", [f"{item!r}: expected key=value"])
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    problems = []
    for item in overrides:
        try:
            keys, value = parse_override(item)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                problems.append(f"{item}: {k} is not a section")
                break
        else:
            node[keys[-1]] = value
    if problems:
        raise ConfigError("overrides", problems)
    return data


def _format_errors(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the config schema)"
        out.append(f"{loc}: {msg}")
    return out


def from_dict(data: dict, config_dir: Path | None = None, source: str = "config") -> CadenceConfig:
    try:
        cfg = CadenceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _format_errors(exc)) from None
    cfg._config_dir = Path(config_dir or REPO_ROOT).resolve()
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> CadenceConfig:
    """Read, override and validate config.json. Missing file = all defaults."""
    path = Path(path or os.environ.get("CADENCE_CONFIG") or DEFAULT_CONFIG_PATH).resolve()
    data: dict = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), [f"not valid JSON: {exc}"]) from None
        if not isinstance(data, dict):
            raise ConfigError(str(path), ["(root): must be a JSON object"])
    data = apply_overrides(data, overrides or [])
    return from_dict(data, path.parent, str(path))


def add_config_args(parser) -> None:
    """The two arguments every entry point takes: --config and trailing key=value overrides."""
    parser.add_argument("--config", default=None, help="config.json path (default: $CADENCE_CONFIG or the repo's config.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.learning_rate=1e-4 (repeatable)")


def config_from_args(args) -> CadenceConfig:
    return load_config(args.config, list(getattr(args, "overrides", []) or []))


def config_or_exit(args) -> CadenceConfig:
    """config_from_args for CLIs: every problem printed to stderr and exit status 2 instead of a traceback."""
    try:
        return config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def schema_reference() -> str:
    lines = []

    def walk(cls: type[BaseModel], prefix: str):
        for name, field in cls.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                lines.append(f"[{prefix}{name}] {field.description or ''}")
                walk(ann, f"{prefix}{name}.")
            else:
                crit = " (CRITICAL)" if (field.json_schema_extra or {}).get("critical") else ""
                default = field.default if field.default_factory is None else field.default_factory()
                if isinstance(default, BaseModel):
                    default = default.model_dump()
                elif isinstance(default, list):
                    default = [d.model_dump() if isinstance(d, BaseModel) else d for d in default]
                lines.append(f"  {prefix}{name} = {json.dumps(default)}{crit}: {field.description}")

    walk(CadenceConfig, "")
    return "\n".join(lines)
