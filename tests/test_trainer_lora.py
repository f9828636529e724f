"""LoRA mode: continuous training and exact resume work as for full fine-tuning; the merged model equals base + adapter."""
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.test_trainer_engine import CrashAt, train_losses, write_chat
from trainer import TrainerEngine, list_checkpoints

LORA = {"training.mode": "lora", "training.learning_rate": 5e-3, "training.micro_batch_tokens": 256,
        "training.save_steps": 4, "training.eval_split_fraction": 0.0, "training.lora.rank": 4, "training.lora.alpha": 8,
        "training.lora.dropout": 0.0}


def test_lora_resume_equals_uninterrupted_and_continues_across_files(make_config, tmp_path):
    data = write_chat(tmp_path / "d.jsonl", 80, seed=3)
    straight = make_config(LORA, base_dir=tmp_path / "a")
    engine = TrainerEngine(straight).setup()
    trainable = sum(p.numel() for p in engine.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in engine.model.parameters())
    assert 0 < trainable < total / 5
    n = engine.train_file(data).steps
    assert n >= 8

    crashed = make_config(LORA, base_dir=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        TrainerEngine(crashed, CrashAt(6)).setup().train_file(data)
    resumed = TrainerEngine(crashed).setup()
    assert resumed.global_step == 4
    resumed.train_file(data)
    la, lb = train_losses(straight), train_losses(crashed)
    assert [m["global_step"] for m in lb] == list(range(1, n + 1))
    assert [m["loss"] for m in la] == pytest.approx([m["loss"] for m in lb], abs=1e-6)
    ca, cb = list_checkpoints(straight.layout.current_model)[-1], list_checkpoints(crashed.layout.current_model)[-1]
    wa, wb = load_file(str(ca.path / "adapter" / "adapter_model.safetensors")), load_file(str(cb.path / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    meta = json.loads((ca.path / "adapter" / "training_metadata.json").read_text())
    assert meta["lora_r"] == 4 and meta["global_step"] == n and meta["final_loss"] is not None

    # a second file continues the same adapter and the global step
    r2 = TrainerEngine(straight).setup().train_file(write_chat(tmp_path / "e.jsonl", 40, seed=4))
    assert r2.global_step_start == n and r2.steps > 0


def test_merged_checkpoint_generates_like_base_plus_adapter(make_config, tmp_path, micro_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_config(LORA)
    TrainerEngine(cfg).setup().train_file(write_chat(tmp_path / "d.jsonl", 60, seed=5))
    ckpt = list_checkpoints(cfg.layout.current_model)[-1].path
    merged = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    base = AutoModelForCausalLM.from_pretrained(micro_model_dir)
    with_adapter = PeftModel.from_pretrained(base, ckpt / "adapter").eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-5)
        plain = AutoModelForCausalLM.from_pretrained(micro_model_dir).eval()
        assert not torch.allclose(plain(ids).logits, merged(ids).logits, atol=1e-4)  # the adapter really trained
        g1 = merged.generate(ids, max_new_tokens=12, do_sample=False)
        g2 = with_adapter.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(g1, g2)
