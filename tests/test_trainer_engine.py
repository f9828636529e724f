"""The engine across files, crashes and restarts: resume equivalence, continuity, fallback, NaN, learning."""
import json
import logging
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer import NonFiniteLossError, TrainerEngine, TrainingHooks, list_checkpoints
from trainer.checkpoint import DiskFullError, publish_checkpoint
from trainer.data import DataError


def write_chat(path, n, seed=0, words=("cat", "dog", "bird", "fish", "tree")):
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 30)))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    return path


class CrashAt(TrainingHooks):
    """Simulates a hard crash (no checkpoint) when a given global step is about to start."""

    def __init__(self, step):
        self.step = step

    def heartbeat(self, phase, global_step):
        if phase == "train" and global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


def train_losses(cfg):
    return [json.loads(l) for l in cfg.layout.metrics.read_text().splitlines() if '"train"' in l]


def weights(cfg):
    ckpt = list_checkpoints(cfg.layout.current_model)[-1]
    return ckpt.step, load_file(str(ckpt.path / "model.safetensors"))


def test_resume_after_crash_equals_uninterrupted_run(make_config, tmp_path):
    data = write_chat(tmp_path / "data.jsonl", 120)
    over = {"training.micro_batch_tokens": 256, "training.save_steps": 5, "training.eval_split_fraction": 0.0}
    straight = make_config(over, base_dir=tmp_path / "a")
    r = TrainerEngine(straight).setup().train_file(data)
    n = r.steps
    assert r.status == "completed" and n >= 10

    crashed = make_config(over, base_dir=tmp_path / "b")
    half = (n // 2 // 5) * 5  # last periodic checkpoint before the crash
    with pytest.raises(KeyboardInterrupt):
        TrainerEngine(crashed, CrashAt(half + 2)).setup().train_file(data)
    assert list_checkpoints(crashed.layout.current_model)[-1].step == half
    resumed = TrainerEngine(crashed).setup()
    assert resumed.global_step == half and resumed.state.current_file.steps_done == half
    r2 = resumed.train_file(data)
    assert r2.status == "completed" and r2.global_step_end == n

    la, lb = train_losses(straight), train_losses(crashed)
    assert [m["global_step"] for m in lb] == list(range(1, n + 1))  # monotonic, recomputed steps not logged twice
    assert [m["loss"] for m in la] == pytest.approx([m["loss"] for m in lb], abs=1e-6)
    (sa, wa), (sb, wb) = weights(straight), weights(crashed)
    assert sa == sb == n
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_two_files_continue_step_optimizer_and_lr(make_config, tmp_path):
    cfg = make_config({"training.warmup_steps": 50, "training.micro_batch_tokens": 256, "training.eval_split_fraction": 0.0})
    f1, f2 = write_chat(tmp_path / "one.jsonl", 40, seed=1), write_chat(tmp_path / "two.jsonl", 40, seed=2)
    engine = TrainerEngine(cfg).setup()
    r1 = engine.train_file(f1)
    engine.close()
    engine = TrainerEngine(cfg).setup()  # a fresh process picks up from the checkpoint
    assert engine.global_step == r1.global_step_end
    opt_state = engine.optimizer.state_dict()["state"]
    assert opt_state and all(int(s["step"]) == r1.global_step_end for s in opt_state.values())
    r2 = engine.train_file(f2)
    assert r2.steps > 0 and r2.global_step_start == r1.global_step_end
    assert r2.global_step_end == r1.steps + r2.steps
    lrs = [m["lr"] for m in train_losses(cfg)]
    # one warmup across both files: the LR keeps rising where file one stopped
    assert lrs == pytest.approx([1e-3 * (i + 1) / 50 for i in range(len(lrs))])
    # the same file again is recognised as done
    again = engine.train_file(f1)
    assert again.status == "already_done" and engine.global_step == r2.global_step_end


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x40]))


CORRUPTIONS = {
    # (file under the checkpoint, how): each must be caught and the previous checkpoint loaded in full
    "model truncated": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "model bit flip": ("model.safetensors", lambda p: _flip_byte(p, p.stat().st_size - 5)),     # loads, hash fails
    "model header garbage": ("model.safetensors", lambda p: _flip_byte(p, 10)),                 # load itself fails
    "optimizer bit flip": ("training_state/optimizer.safetensors", lambda p: _flip_byte(p, p.stat().st_size - 5)),
    "trainer state edited": ("training_state/trainer_state.json",
                             lambda p: p.write_text(p.read_text().replace('"global_step": ', '"global_step": 1'))),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_latest_checkpoint_falls_back(make_config, tmp_path, caplog, kind):
    cfg = make_config({"training.save_steps": 2, "training.save_total_limit": 10, "training.micro_batch_tokens": 256})
    data = write_chat(tmp_path / "d.jsonl", 40)
    TrainerEngine(cfg).setup().train_file(data)
    ckpts = list_checkpoints(cfg.layout.current_model)
    latest, previous = ckpts[-1], ckpts[-2]
    rel, corrupt = CORRUPTIONS[kind]
    corrupt(latest.path / rel)
    with caplog.at_level(logging.WARNING):
        engine = TrainerEngine(cfg).setup()
    assert engine.global_step == previous.step
    assert any("corrupt" in r.message and latest.path.name in r.message and rel in r.message for r in caplog.records)
    # what was loaded is the previous checkpoint's content, weights and optimizer moments alike
    saved = load_file(previous.path / "model.safetensors")
    model = engine.accelerator.unwrap_model(engine.model)
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    moments = load_file(previous.state_dir / "optimizer.safetensors")
    state = engine.optimizer.state_dict()["state"]
    for key, tensor in moments.items():
        _, index, name = key.split(".", 2)
        assert torch.equal(state[int(index)][name], tensor), key


def test_nan_loss_stops_with_clear_error_and_never_saves(make_config, tmp_path):
    cfg = make_config({"training.save_steps": 1, "training.micro_batch_tokens": 256})
    data = write_chat(tmp_path / "d.jsonl", 20)
    engine = TrainerEngine(cfg).setup()
    with torch.no_grad():
        engine.model.get_input_embeddings().weight[:] = float("nan")
    with pytest.raises(NonFiniteLossError, match="global step 1"):
        engine.train_file(data)
    assert list_checkpoints(cfg.layout.current_model) == []


def test_disk_full_leaves_no_partial_checkpoint(tmp_path):
    def write(tmp):
        (tmp / "model.safetensors").write_bytes(b"x" * 10)
        raise OSError(28, "No space left on device")

    with pytest.raises(DiskFullError):
        publish_checkpoint(tmp_path, 7, write)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DiskFullError, match="GB free"):
        publish_checkpoint(tmp_path, 8, write, min_free_bytes=1 << 62)


def test_truncation_policies(make_config, tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "cat " * 300}, {"role": "assistant", "content": "dog"}]}] + \
           [{"messages": [{"role": "user", "content": "cat"}, {"role": "assistant", "content": "dog " * k}]} for k in range(1, 10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = TrainerEngine(make_config({"training.truncation": "drop"})).setup().train_file(path)
    assert r.truncated == 1 and r.examples == 9 and "d.jsonl:1" in r.dropped[0]
    r = TrainerEngine(make_config({"training.truncation": "truncate"}, base_dir=tmp_path / "t")).setup().train_file(path)
    assert r.truncated == 1 and r.examples == 9 and "no supervised tokens left" in r.dropped[0]
    with pytest.raises(DataError, match="d.jsonl:1: .* > max_length 256"):
        TrainerEngine(make_config({"training.truncation": "error"}, base_dir=tmp_path / "e")).setup().train_file(path)


def test_critical_change_refused(make_config, tmp_path):
    from trainer import ConfigMismatchError

    base = tmp_path / "run"
    cfg = make_config({"training.save_steps": 1}, base_dir=base)
    TrainerEngine(cfg).setup().train_file(write_chat(tmp_path / "d.jsonl", 10))
    changed = make_config({"model.max_length": 128, "training.micro_batch_tokens": 512}, base_dir=base)
    with pytest.raises(ConfigMismatchError, match="model.max_length: 256 -> 128"):
        TrainerEngine(changed).setup()
    assert TrainerEngine(changed, new_run=True).setup().global_step == 0


def test_tiny_model_learns_and_reproduces_answers(make_config, tiny_model_dir, tmp_path):
    pairs = [("cat", "meow"), ("dog", "woof"), ("bird", "tweet"), ("fish", "blub"), ("cow", "moo"), ("owl", "hoot")]
    path = tmp_path / "memo.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What does the {a} say?"},
                                                     {"role": "assistant", "content": b}]}) + "\n" for a, b in pairs))
    cfg = make_config({"training.learning_rate": 3e-3, "training.warmup_steps": 5, "training.epochs": 60,
                       "training.micro_batch_tokens": 512, "training.save_steps": 10_000}, model_dir=tiny_model_dir)
    engine = TrainerEngine(cfg).setup()
    engine.train_file(path)
    losses = [m["loss"] for m in train_losses(cfg)]
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    for a, b in pairs:
        assert engine.generate([{"role": "user", "content": f"What does the {a} say?"}], 8).strip() == b


def _checkpoint_tensors(ckpt):
    out = dict(load_file(ckpt.path / "model.safetensors"))
    out.update({f"opt/{k}": v for k, v in load_file(ckpt.state_dir / "optimizer.safetensors").items()})
    return out


def test_async_periodic_checkpoints_equal_synchronous_ones(make_config, tmp_path):
    """Training goes on while a periodic checkpoint is hashed, fsynced and published: what lands on disk is
    still exactly the state at its step, and every checkpoint is published and reported."""
    data = write_chat(tmp_path / "data.jsonl", 80)
    over = {"training.micro_batch_tokens": 256, "training.save_steps": 2, "training.save_total_limit": 100,
            "training.eval_split_fraction": 0.0}
    runs = {}
    for mode in ("on", "off"):
        cfg = make_config({**over, "training.async_checkpoint": mode}, base_dir=tmp_path / mode)
        result = TrainerEngine(cfg).setup().train_file(data)
        ckpts = list_checkpoints(cfg.layout.current_model)
        reported = [m["global_step"] for m in (json.loads(x) for x in cfg.layout.metrics.read_text().splitlines())
                    if m.get("type") == "checkpoint"]
        assert [c.step for c in ckpts] == sorted(reported) == list(range(2, result.steps, 2)) + [result.steps]
        assert not [p for p in cfg.layout.current_model.iterdir() if p.name.startswith(".tmp")]
        runs[mode] = {c.step: _checkpoint_tensors(c) for c in ckpts}
    assert runs["on"].keys() == runs["off"].keys()
    for step, tensors in runs["on"].items():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, runs["off"][step][name]), (step, name)


def test_background_checkpoint_failure_surfaces_and_publishes_nothing(make_config, tmp_path, monkeypatch):
    import errno

    import trainer.checkpoint as checkpoint

    cfg = make_config({"training.micro_batch_tokens": 256, "training.save_steps": 2, "training.save_total_limit": 100,
                       "training.eval_split_fraction": 0.0, "training.async_checkpoint": "on"})
    data = write_chat(tmp_path / "data.jsonl", 60)
    real = checkpoint._fsync_dirs

    def flaky(folder):
        if folder.name.startswith(".tmp-checkpoint-4-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(folder)

    monkeypatch.setattr(checkpoint, "_fsync_dirs", flaky)
    with pytest.raises(DiskFullError, match="checkpoint-4"):
        TrainerEngine(cfg).setup().train_file(data)
    root = cfg.layout.current_model
    assert [c.step for c in list_checkpoints(root)] == [2]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    monkeypatch.setattr(checkpoint, "_fsync_dirs", real)
    resumed = TrainerEngine(cfg).setup()
    assert resumed.global_step == 2 and resumed.state.current_file.steps_done == 2
    assert resumed.train_file(data).status == "completed"
