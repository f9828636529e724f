"""The pass/fail verdict and the one-line figures of each benchmarks/gpu_check.sh step, from what the step wrote.

A step's exit code is not enough: serve.py reports a backend that could not start
(or requests that failed) in its output and still exits 0, and pytest exits 0
when every test skipped. This reads the step's JSON (or pytest's log) and prints
one line for gpu_check.sh's table; exit 0 = the step did what it is for, 1 = it
did not (the line says why), 2 = bad usage.

Run as (gpu_check.sh does):
    python benchmarks/gpu_check_verify.py pytest OUT/gpu-tests.log
    python benchmarks/gpu_check_verify.py train OUT/train-0.6b.json
    python benchmarks/gpu_check_verify.py serve OUT/serve.json --backends cadence cadence+vllm --swap-versions 3
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


class Failed(Exception):
    """The step ran but did not show what it is for; the message says what is missing."""


# ---------------------------------------------------------------------------------------------- pytest
# pytest's last line: "3 passed, 1 skipped in 12.34s" (-q) or "==== 3 passed in 83.21s (0:01:23) ====" (the default)
SUMMARY = re.compile(r"^(?:=+ )?(\d+ [a-z]+(?:, \d+ [a-z]+)*|no tests ran) in [\d.]+s(?: \([^)]*\))?(?: =+)?$")
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")


def verify_pytest(log: str) -> str:
    """Every collected test passed: none failed, errored, skipped or xfailed (on the GPU box all must run)."""
    lines = [line for line in log.splitlines() if SUMMARY.match(line.strip())]
    if not lines:
        raise Failed("no pytest summary line in the log (pytest did not finish)")
    counts: dict[str, int] = {}
    for n, what in COUNT.findall(SUMMARY.match(lines[-1].strip()).group(1)):
        counts[what.rstrip("s") if what.startswith(("error", "warning")) else what] = int(n)
    bad = {k: v for k, v in counts.items() if k in ("failed", "error", "skipped", "xfailed", "xpassed") and v}
    if bad:
        raise Failed(", ".join(f"{v} {k}" for k, v in bad.items()) + f" ({counts.get('passed', 0)} passed)")
    if not counts.get("passed"):
        raise Failed("no test passed")
    return f"{counts['passed']} passed"


# ---------------------------------------------------------------------------------------------- training
def verify_train(data: dict, contenders=("hf", "trl", "cadence")) -> str:
    """train_throughput.py --throughput --json: every contender trained (tok/s > 0); the ratios as figures."""
    results = data.get("results") or {}
    missing = [c for c in contenders if not (results.get(c) or {}).get("tokens_per_s")]
    if missing:
        raise Failed(f"no tok/s for {', '.join(missing)}")
    cadence = results["cadence"]["tokens_per_s"]
    parts = [f"cadence {cadence:.0f} tok/s"]
    for name in contenders:
        if name != "cadence":
            parts.append(f"{cadence / results[name]['tokens_per_s']:.2f}x {name}")
    peak, per_token = data.get("peak_gflops"), (data.get("flops") or {}).get("flops_per_token")
    if peak and per_token:
        parts.append(f"MFU {cadence * per_token / (peak * 1e9):.0%}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- serving
def verify_serve(data: dict, backends: list[str], swap_versions: int) -> str:
    """serve.py --json: every backend served every level with no failed request; the swap (if asked) deployed
    every version (200), failed no request before or during the swaps, and the new versions served."""
    runs = {k: v for k, v in data.items() if k.startswith("threads=")}
    if not runs:
        raise Failed("no serving run in the JSON")
    parts = []
    for label, run in runs.items():
        results = run.get("results") or {}
        for name in backends:
            rows = results.get(name)
            if rows is None:
                raise Failed(f"{name}: not run ({label})")
            if isinstance(rows, str):
                raise Failed(f"{name}: {rows.splitlines()[0] if rows else 'failed'}")
            for level, row in rows.items():
                if not row.get("requests"):
                    raise Failed(f"{name} c={level}: no request ran")
                if row.get("failed"):
                    raise Failed(f"{name} c={level}: {row['failed']} of {row['requests']} requests failed "
                                 f"({'; '.join(row.get('errors') or [])[:200]})")
            top = max(rows, key=lambda c: int(c))
            parts.append(f"{name} c={top} {rows[top]['output_tok_per_s']:.0f} tok/s")
        if swap_versions:
            parts.append(_verify_swap(run.get("swap"), swap_versions))
    return ", ".join(parts)


def _verify_swap(swap: dict | None, versions: int) -> str:
    if not swap:
        raise Failed("the swap under load did not run")
    loads = swap.get("loads") or []
    if len(loads) != versions or any(x.get("status") != 200 for x in loads):
        raise Failed(f"swap: {len(loads)} of {versions} deploys, statuses {[x.get('status') for x in loads]}")
    failed = swap["steady"]["failed"] + swap["during_swap"]["failed"]
    if failed:
        raise Failed(f"swap: {failed} requests failed")
    deployed = {x.get("version") for x in loads}
    seen = set(swap.get("versions_seen") or [])
    if not deployed & seen:
        raise Failed(f"swap: no request was served by a deployed version (served by {sorted(seen)})")
    return (f"swap {versions} versions, {swap['during_swap']['requests']} requests 0 failed, "
            f"TTFT p99 {swap['ttft_p99_ratio']:.2f}x steady")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("pytest").add_argument("log")
    sub.add_parser("train").add_argument("json")
    serve = sub.add_parser("serve")
    serve.add_argument("json")
    serve.add_argument("--backends", nargs="+", required=True)
    serve.add_argument("--swap-versions", type=int, default=0)
    args = parser.parse_args(argv)
    path = Path(args.log if args.what == "pytest" else args.json)
    try:
        if not path.is_file():
            raise Failed(f"{path} missing (the step wrote no result)")
        text = path.read_text(errors="replace")
        if args.what == "pytest":
            line = verify_pytest(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise Failed(f"{path}: not JSON ({exc})") from None
            line = verify_train(data) if args.what == "train" else verify_serve(data, args.backends, args.swap_versions)
    except Failed as why:
        print(f"FAILED: {why}")
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
