"""Helpers for the inference tests: a live uvicorn server in a thread, and deployable model versions."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import torch

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`create_app(cfg)` under uvicorn on 127.0.0.1:<random port>, in a background thread."""

    def __init__(self, cfg):
        import uvicorn

        from core.http_server import server_config
        from inference.app import create_app

        self.cfg = cfg
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(cfg)
        icfg = cfg.inference
        self.server = uvicorn.Server(server_config(self.app, "127.0.0.1", self.port, icfg.read_timeout,
                                                   icfg.keep_alive_timeout, log_level="warning",
                                                   timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def state(self):
        return self.app.state.cadence

    def admin(self, method: str, path: str, json=None, timeout: float = 60) -> httpx.Response:
        return httpx.request(method, self.url + path, json=json, timeout=timeout,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def load(self, path, version=None) -> httpx.Response:
        return self.admin("POST", "/admin/models/load", {"path": str(path), **({"version": version} if version else {})})


def perturb_weights(folder: Path, seed: int, scale: float = 0.02) -> None:
    """Add seeded noise to every float tensor of model.safetensors (a 'newly trained' version)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    g = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if t.is_floating_point():
            tensors[name] = t + scale * torch.randn(t.shape, generator=g, dtype=t.dtype)
    save_file(tensors, path, metadata={"format": "pt"})


def make_version(src: Path, dst: Path, version: str, global_step: int, seed: int = 0, manifest: bool = True) -> Path:
    """Copy a model folder, perturb its weights, write a manifest naming version and global step."""
    from core.manifest import write_manifest

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    perturb_weights(dst, seed)
    if manifest:
        write_manifest(dst, model_only=True, version=version, global_step=global_step)
    return dst


def sse_events(lines) -> list:
    """Parse `data: ...` lines of an SSE stream into JSON objects (the final `[DONE]` kept as the string)."""
    import json

    out = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
