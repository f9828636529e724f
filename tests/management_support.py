"""Helpers for the lifecycle tests: checkpoints made from the micro model, validation files, ledger entries, a live server."""
from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.inference_support import ADMIN_TOKEN, LiveServer, free_port, perturb_weights  # noqa: F401 (re-exported)

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "special_tokens_map.json")


def make_checkpoint(cfg, model_dir: Path, step: int, seed: int | None = None, nan: bool = False, scale: float = 0.02,
                    state: dict | None = None):
    """Publish `checkpoint-<step>` with the micro model's files (weights perturbed by `seed`), a training_state and a manifest."""
    import torch
    from safetensors.torch import load_file, save_file

    from core.state.trainer_state import TrainerState, write_trainer_state
    from trainer.checkpoint import publish_checkpoint

    def write(tmp: Path) -> None:
        for p in Path(model_dir).iterdir():
            if p.is_file() and p.name != "manifest.json":
                shutil.copy2(p, tmp / p.name)
        if seed is not None:
            perturb_weights(tmp, seed, scale)
        if nan:
            tensors = load_file(tmp / "model.safetensors")
            name = next(n for n, t in tensors.items() if t.is_floating_point())
            tensors[name] = torch.full_like(tensors[name], float("nan"))
            save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        sd = tmp / "training_state"
        sd.mkdir()
        (sd / "optimizer.safetensors").write_bytes(b"\0" * 4096)
        (sd / "rng.pt").write_bytes(b"\0" * 64)
        write_trainer_state(sd, TrainerState(**{"global_step": step, "files_done": ["a.jsonl"], "examples_seen": 10 * step,
                                 "last_file": {"final_loss": 1.0, "val_loss": 1.1}, "run_started_at": time.time() - 60,
                                 **(state or {})}))

    return publish_checkpoint(cfg.layout.current_model, step, write)


def write_chat_rows(path: Path, n: int, seed: int = 0, words=("cat", "dog", "bird", "fish", "tree")) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for _ in range(n):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    return path


def entry(name: str, step: int, val_loss=None, anchor_loss=None, status="scored", **metrics) -> dict:
    """A ledger entry as the comparison engine writes it."""
    return {"checkpoint": name, "step": step, "content_id": f"cid-{name}", "status": status,
            "metrics": {"val_loss": val_loss, "anchor_loss": anchor_loss, **metrics}}


def write_config_file(cfg) -> Path:
    path = cfg.layout.base_dir / "config.json"
    path.write_text(cfg.to_json())
    return path


def served(server) -> dict:
    import httpx

    return httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]


class RsyncDaemon:
    """`rsync --daemon --no-detach` on 127.0.0.1:<free port> with one writable module `models` at `root`."""

    def __init__(self, root: Path, workdir: Path):
        self.root, self.workdir = Path(root), Path(workdir)
        self.port = free_port()
        self.url = f"rsync://127.0.0.1:{self.port}/models"
        self.proc = None

    def __enter__(self) -> "RsyncDaemon":
        self.root.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "rsyncd.conf"
        conf.write_text(f"use chroot = no\npid file = {self.workdir / 'rsyncd.pid'}\nlock file = {self.workdir / 'rsyncd.lock'}\n"
                        f"log file = {self.workdir / 'rsyncd.log'}\n[models]\n  path = {self.root}\n  read only = no\n"
                        f"  uid = root\n  gid = root\n")
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", "--address=127.0.0.1",
                                      f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsync daemon did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
