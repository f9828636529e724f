"""The compiled training forward (training.compile): same loss and gradients as transformers' forward, one compile
for every packed-row length, resume equivalence with it on, and the cases that must keep the transformers forward."""

import pytest
import torch

from test_trainer_engine import CrashAt, train_losses, weights, write_chat
from trainer import TrainerEngine
from trainer.compile import backend_available
from trainer.data import IGNORE_INDEX, encode_examples
from trainer.fast_path import PackedForward, supported
from trainer.packing import pack

needs_compiler = pytest.mark.skipif(not backend_available(torch.device("cpu"))[0], reason="no C++ compiler for Inductor")


def _rows(n, seed=0):
    import random

    rng = random.Random(seed)
    words = ("cat", "dog", "bird", "fish", "tree", "red", "blue")
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": " ".join(rng.choice(words) for _ in range(5))})
        for _t in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": " ".join(rng.choice(words) for _ in range(rng.randint(2, 40)))})
            messages.append({"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))})
        rows.append({"messages": messages})
    return rows


def _grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same(got, ref, loss_rtol, grad_rtol):
    assert got[0] == pytest.approx(ref[0], rel=loss_rtol)
    assert got[1].keys() == ref[1].keys()
    for name, g in ref[1].items():
        scale = g.abs().max().item() + 1e-12
        assert (got[1][name] - g).abs().max().item() / scale < grad_rtol, name


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=needs_compiler)])
def test_packed_forward_equals_transformers_forward(make_config, compile):
    engine = TrainerEngine(make_config({"training.compile": "off"})).setup()
    model = engine.model
    assert supported(model) == (True, "qwen3 packed forward")
    examples = encode_examples(_rows(24), engine.tokenizer, "chat_sft_v1", 256)
    fast = PackedForward(model, compile=compile, gemm_autotune=compile)
    # Several packed rows of different lengths and example counts through the same compiled functions.
    for chunk in (examples[:3], examples[3:12], examples[12:]):
        batch = pack(chunk)
        mask = batch.targets[0] != IGNORE_INDEX
        ref = _grads(model, lambda: engine._loss_sum(batch))
        got = _grads(model, lambda: fast.loss_sum(batch, mask, 1 << 26))
        _assert_same(got, ref, 1e-6, 1e-5)
        # The chunked LM head (big vocabularies) gives the same loss and gradients.
        chunked = _grads(model, lambda: fast.loss_sum(batch, mask, 7 * model.config.vocab_size))
        _assert_same(chunked, ref, 1e-6, 1e-5)


@needs_compiler
def test_one_compile_serves_every_row_length(make_config):
    import torch._dynamo.utils as dynamo_utils

    engine = TrainerEngine(make_config({"training.compile": "off"})).setup()
    examples = encode_examples(_rows(40, seed=3), engine.tokenizer, "chat_sft_v1", 256)
    torch._dynamo.reset()
    fast = PackedForward(engine.model, compile=True)
    lengths = []
    for chunk in (examples[:1], examples[1:4], examples[4:20], examples[20:21], examples[21:]):
        batch = pack(chunk)
        lengths.append(batch.n_tokens)
        fast.loss_sum(batch, batch.targets[0] != IGNORE_INDEX, 1 << 26).backward()
    assert len(set(lengths)) == 5, lengths
    # Each of the three functions: at most one recompile in all (the first call's guards), none per length.
    frames = dynamo_utils.counters["frames"]
    assert frames["ok"] <= 6, dict(frames)


@needs_compiler
def test_resume_with_compile_equals_uninterrupted_run(make_config, tmp_path):
    data = write_chat(tmp_path / "data.jsonl", 120)
    over = {"training.micro_batch_tokens": 256, "training.save_steps": 5, "training.eval_split_fraction": 0.0,
            "training.compile": "on"}
    straight = make_config(over, base_dir=tmp_path / "a")
    r = TrainerEngine(straight).setup().train_file(data)
    n = r.steps
    assert r.status == "completed" and n >= 10
    from trainer.compile import USER_CACHE_DIR
    if USER_CACHE_DIR is None:  # kernels cached under the run's base_dir, not Dynamo's /tmp default
        assert any(p.is_file() for p in (straight.layout.cache / "torchinductor").rglob("*"))
    crashed = make_config(over, base_dir=tmp_path / "b")
    half = (n // 2 // 5) * 5
    with pytest.raises(KeyboardInterrupt):
        TrainerEngine(crashed, CrashAt(half + 2)).setup().train_file(data)
    resumed = TrainerEngine(crashed).setup()
    assert resumed._compiled is not None
    assert resumed.train_file(data).global_step_end == n
    la, lb = train_losses(straight), train_losses(crashed)
    assert [m["loss"] for m in la] == pytest.approx([m["loss"] for m in lb], abs=1e-6)
    (_, wa), (_, wb) = weights(straight), weights(crashed)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    # and it trained the same model as the eager forward would have, to float tolerance
    eager = make_config(dict(over, **{"training.compile": "off"}), base_dir=tmp_path / "c")
    TrainerEngine(eager).setup().train_file(data)
    le = train_losses(eager)
    assert [m["loss"] for m in le] == pytest.approx([m["loss"] for m in la], rel=1e-4)


def test_auto_compiles_only_long_files(make_config, tmp_path, caplog):
    import logging

    data = write_chat(tmp_path / "data.jsonl", 40)
    cfg = make_config({"training.micro_batch_tokens": 256, "training.compile": "auto", "training.compile_min_steps": 1000})
    engine = TrainerEngine(cfg).setup()
    with caplog.at_level(logging.INFO, logger="trainer.engine"):
        engine.train_file(data)
    assert engine._compile_steps is False
    if engine._compiled is not None:
        assert any("eager (compile = auto needs >= 1000 steps)" in r.getMessage() for r in caplog.records)


def test_lora_and_checkpointing_keep_the_transformers_forward(make_config):
    lora = TrainerEngine(make_config({"training.mode": "lora", "training.compile": "on"})).setup()
    assert lora._compiled is None
    ok, why = supported(lora.accelerator.unwrap_model(lora.model))
    assert not ok and "LoRA" in why
    ckpt = TrainerEngine(make_config({"model.gradient_checkpointing": True, "training.compile": "auto"})).setup()
    assert ckpt._compiled is None


def test_compile_setting_is_validated(make_config):
    from core.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config({"training.compile": "fast"})
    assert "training.compile" in str(err.value)
