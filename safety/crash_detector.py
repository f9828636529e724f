"""Classify every training-child exit and decide what the daemon does about it.

Categories: cuda_oom, cpu_oom (the kernel's OOM killer), cuda_error, nan_loss,
disk_full, data_error, config_error, import_error, killed, stuck, unknown —
from the exit code, the signal, the child's result file and the tail of its log.
Every classification is appended to `status/crash_history.jsonl`.

Run as:
    python3 safety/crash_detector.py history [--json] [-n 20]
"""
from __future__ import annotations

import json
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.atomic_io import append_jsonl  # noqa: E402

CATEGORIES = ("cuda_oom", "cpu_oom", "cuda_error", "nan_loss", "disk_full", "data_error", "config_error",
              "import_error", "killed", "stuck", "unknown")

_LOG_PATTERNS = [
    ("cuda_oom", re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", re.I)),
    ("cuda_error", re.compile(r"CUDA error|cudaError|device-side assert|NCCL error", re.I)),
    ("disk_full", re.compile(r"No space left on device|ENOSPC|disk full", re.I)),
    ("import_error", re.compile(r"ModuleNotFoundError|ImportError", re.I)),
    ("nan_loss", re.compile(r"loss is nan|loss is inf|NonFiniteLoss", re.I)),
    ("cpu_oom", re.compile(r"MemoryError|Cannot allocate memory", re.I)),
]

# What the daemon does next, per category.
ACTIONS = {
    "cuda_oom": "shrink_batch_retry",   # halve the micro-batch, double accumulation, retry
    "cpu_oom": "shrink_batch_retry",
    "cuda_error": "retry",
    "nan_loss": "fail",                 # the same data would diverge again
    "disk_full": "free_disk_and_pause",
    "data_error": "fail",               # no retry: the file is bad
    "config_error": "pause",            # an operator must fix the config
    "import_error": "pause",
    "killed": "retry",
    "stuck": "retry",
    "unknown": "retry",
}


@dataclass
class Crash:
    category: str
    action: str
    exit_code: int | None
    signal: str | None
    message: str
    file: str | None = None
    global_step: int | None = None
    ts: float = 0.0


def classify(exit_code: int | None, result: dict | None = None, log_tail: str = "", killed_by_us: str | None = None,
             heartbeat: dict | None = None) -> tuple[str, str]:
    """(category, message) for one child exit. `killed_by_us` is the reason the daemon killed it ('stuck', 'shutdown')."""
    if killed_by_us == "stuck":
        return "stuck", "no heartbeat progress: killed by the anti-stuck monitor"
    if result and result.get("category") not in (None, "completed", "interrupted", "unknown"):
        cat = {"oom": "cuda_oom" if "cuda" in (result.get("message") or "").lower() else "cpu_oom"}.get(
            result["category"], result["category"])
        return cat, result.get("message") or cat
    text = "\n".join(filter(None, [(result or {}).get("message"), (result or {}).get("traceback"), log_tail]))
    for cat, rx in _LOG_PATTERNS:
        if rx.search(text):
            line = next((l for l in text.splitlines()[::-1] if rx.search(l)), cat)
            return cat, line.strip()[:500]
    if exit_code is not None and exit_code < 0:
        sig = -exit_code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGKILL and not killed_by_us:
            ram = (heartbeat or {}).get("ram_pct")
            if ram is not None and ram > 90:
                return "cpu_oom", f"SIGKILL with RAM at {ram}%: the kernel's OOM killer"
            return "killed", "SIGKILL from outside Cadence (OOM killer or an operator)"
        if sig == signal.SIGSEGV:
            return "unknown", "segmentation fault"
        return "killed", f"terminated by {name}"
    if result and result.get("category") == "unknown":
        return "unknown", result.get("message") or "unknown error"
    return "unknown", f"exit code {exit_code} without a result"


def signal_name(exit_code: int | None) -> str | None:
    if exit_code is None or exit_code >= 0:
        return None
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return str(-exit_code)


def record(history_path: Path, exit_code: int | None, category: str, message: str, file: str | None,
           global_step: int | None) -> Crash:
    crash = Crash(category, ACTIONS[category], exit_code, signal_name(exit_code), message, file, global_step, time.time())
    append_jsonl(history_path, asdict(crash))
    return crash


def history(history_path: Path, n: int = 20) -> list[dict]:
    if not Path(history_path).exists():
        return []
    lines = Path(history_path).read_text().splitlines()[-n:]
    return [json.loads(l) for l in lines if l.strip()]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from core.config import add_config_args, config_or_exit

    parser = argparse.ArgumentParser(description="Show classified training-child crashes.")
    parser.add_argument("command", choices=["history"])
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    rows = history(cfg.layout.status / "crash_history.jsonl", args.n)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['ts']))}  {r['category']:<12} {r['action']:<20} "
                  f"{r.get('file') or '-'}  {r['message'][:100]}")
        if not rows:
            print("no crashes recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
