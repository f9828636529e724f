"""benchmarks/gpu_check.sh without a GPU: its syntax, its table and exit code (--dry-run), and the verdicts of
benchmarks/gpu_check_verify.py on the shapes of output its steps write (serve.py's own summarize() builds them)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.gpu_check_verify import Failed, main, verify_pytest, verify_serve, verify_train

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["gpu-tests", "swap-builtin", "swap-vllm", "train-0.6b", "serve"]


def dry_run(tmp_path, **env) -> tuple[int, dict[str, list[str]], str]:
    """Run the script with --dry-run; its exit code, its table (first column -> the other columns), stdout."""
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, GPU_CHECK_DIR=str(tmp_path / "out"), **env))
    lines = run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("step "))
    table = {}
    for line in lines[start + 2:]:
        if line.startswith("logs and JSON results:"):
            break
        name, result = line[:13].strip(), line[14:40].strip()
        table[name] = [result, line[41:48].strip(), line[50:110].strip()]
    return run.returncode, table, run.stdout


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_dry_run_lists_every_step_and_exits_0(tmp_path):
    code, table, out = dry_run(tmp_path)
    assert code == 0, out
    assert list(table) == ["setup", *STEPS, "total"]
    assert all(table[s][0] == "ok" for s in STEPS)
    assert table["total"][0] == "all passed"
    # each step logged the command a real run executes
    log = (tmp_path / "out" / "train-0.6b.log").read_text()
    assert "benchmarks/train_throughput.py --preset qwen3-0.6b --throughput" in log and "would run" in log


def test_a_failing_and_a_hanging_step_fail_the_run_and_the_others_still_run(tmp_path):
    code, table, out = dry_run(tmp_path, GPU_CHECK_DRY_FAIL="swap-vllm", GPU_CHECK_DRY_HANG="gpu-tests")
    assert code == 1, out
    assert table["gpu-tests"][:1] == ["TIMEOUT (1s)"] and table["gpu-tests"][2] == "stopped after its 1 s"
    assert table["swap-vllm"] == ["FAILED (exit 3)", "0", "dry run: simulated failure"]
    assert [table[s][0] for s in ("swap-builtin", "train-0.6b", "serve")] == ["ok"] * 3
    assert table["total"][0] == "FAILURES"


def test_unknown_options_are_refused(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "unknown option --dryrun" in run.stderr


# ---- the verdicts on each step's output -----------------------------------------------------------------
@pytest.mark.parametrize("log, verdict", [
    ("....\n4 passed in 80.12s (0:01:20)\n", "4 passed"),
    ("===== 1 passed, 2 warnings in 3.00s =====\n", "1 passed"),
    ("SKIPPED [1] tests/test_gpu.py:38: this GPU has no bf16\n3 passed, 1 skipped in 20.00s\n", "1 skipped"),
    ("F..\n1 failed, 2 passed in 9.10s\n", "1 failed"),
    ("1 xfailed in 0.50s\n", "1 xfailed"),
    ("no tests ran in 0.01s\n", "no test passed"),
    ("ImportError while loading conftest\n", "no pytest summary"),
])
def test_pytest_verdict(log, verdict):
    if verdict.endswith("passed") and verdict[0].isdigit():
        assert verify_pytest(log) == verdict
    else:
        with pytest.raises(Failed, match=verdict):
            verify_pytest(log)


def _train_json(**tok_s) -> dict:
    return {"flops": {"flops_per_token": 3.6e9}, "peak_gflops": 20000.0,
            "results": {name: {"tokens_per_s": v} for name, v in tok_s.items()}}


def test_train_verdict():
    line = verify_train(_train_json(hf=1000.0, trl=1500.0, cadence=3000.0))
    assert line == "cadence 3000 tok/s, 3.00x hf, 2.00x trl, MFU 54%"
    with pytest.raises(Failed, match="no tok/s for trl"):
        verify_train(_train_json(hf=1000.0, cadence=3000.0))


def _requests(n: int, failed: int = 0, version: str = "base") -> list[dict]:
    return [{"start": 0.0, "end": 1.0, "ttft": 0.1, "e2e": 1.0, "itl": [0.03] * 30, "tokens": 32,
             "error": "HTTP 503" if i < failed else None, "version": version} for i in range(n)]


def _serve_json(rows: dict, swap: dict | None = None) -> dict:
    from benchmarks.serve import summarize

    results = {name: (r if isinstance(r, str) else {8: summarize(r, 2.0)}) for name, r in rows.items()}
    return json.loads(json.dumps({"threads=default": {"results": results, "swap": swap}}))  # as written to disk


def test_serve_verdict():
    backends = ["cadence", "cadence+vllm"]
    good = _serve_json({"cadence": _requests(32), "cadence+vllm": _requests(32)})
    assert verify_serve(good, backends, 0) == "cadence c=8 512 tok/s, cadence+vllm c=8 512 tok/s"
    not_started = _serve_json({"cadence": _requests(32), "cadence+vllm": "RuntimeError: cadence+vllm exited with 1"})
    with pytest.raises(Failed, match="cadence\\+vllm: RuntimeError: cadence\\+vllm exited with 1"):
        verify_serve(not_started, backends, 0)
    some_failed = _serve_json({"cadence": _requests(32, failed=2), "cadence+vllm": _requests(32)})
    with pytest.raises(Failed, match="cadence c=8: 2 of 32 requests failed"):
        verify_serve(some_failed, backends, 0)
    with pytest.raises(Failed, match="cadence\\+vllm: not run"):
        verify_serve(_serve_json({"cadence": _requests(32)}), backends, 0)


def test_swap_verdict():
    from benchmarks.serve import summarize

    def swap(statuses, failed=0):
        loads = [{"status": s, "seconds": 1.0, "version": f"swap-v{i:02d}"} for i, s in enumerate(statuses)]
        return {"steady": summarize(_requests(16), 2.0), "during_swap": summarize(_requests(40, failed), 4.0),
                "loads": loads, "versions_seen": ["base", "swap-v00", "swap-v01"], "ttft_p99_ratio": 1.5}

    rows = {"cadence": _requests(32)}
    assert verify_serve(_serve_json(rows, swap([200, 200])), ["cadence"], 2).endswith(
        "swap 2 versions, 40 requests 0 failed, TTFT p99 1.50x steady")
    with pytest.raises(Failed, match=r"statuses \[403, 403\]"):  # e.g. refused by the load-path policy
        verify_serve(_serve_json(rows, swap([403, 403])), ["cadence"], 2)
    with pytest.raises(Failed, match="swap: 3 requests failed"):
        verify_serve(_serve_json(rows, swap([200, 200], failed=3)), ["cadence"], 2)
    with pytest.raises(Failed, match="the swap under load did not run"):
        verify_serve(_serve_json(rows), ["cadence"], 2)


def test_the_command_line_names_a_missing_result(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nothing.json")]) == 1
    assert capsys.readouterr().out.startswith(f"FAILED: {tmp_path / 'nothing.json'} missing")
    (tmp_path / "bad.json").write_text("{")
    assert main(["serve", str(tmp_path / "bad.json"), "--backends", "cadence"]) == 1
    assert "not JSON" in capsys.readouterr().out
