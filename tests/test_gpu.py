"""What only a CUDA GPU can show (skipped without one; benchmarks/gpu_check.sh runs them on a fresh CUDA box).

bf16 autocast, the varlen attention path on CUDA, a real CUDA OOM classified and
answered by the halve-micro-batch retry, async checkpoints (on by default on a
GPU) equal to synchronous ones, and a vLLM swap under load (the vLLM venv:
scripts/setup.sh --vllm), which on the CPU box is a known hang (issue 15). Run
the vLLM test in its own pytest process (gpu_check.sh does): CUDA memory the
other tests' process keeps cached would count against the two vLLM servers.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")]


def write_chat(path, n, seed=0, words=("cat", "dog", "bird", "fish", "tree")):
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 30)))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    return path


def test_bf16_autocast_trains_with_bf16_matmuls_and_fp32_weights(make_config, tmp_path):
    from trainer import TrainerEngine

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = make_config({"model.dtype": "auto", "training.eval_split_fraction": 0.0})
    engine = TrainerEngine(cfg).setup()
    assert engine.accelerator.device.type == "cuda" and engine.accelerator.mixed_precision == "bf16"
    seen = []
    head = engine._net.get_output_embeddings()
    hook = head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    result = engine.train_file(write_chat(tmp_path / "d.jsonl", 60))
    hook.remove()
    assert result.status == "completed" and result.final_loss is not None and result.final_loss == result.final_loss
    assert torch.bfloat16 in seen  # the matmuls ran in bf16 under autocast
    assert all(p.dtype == torch.float32 for p in engine._net.parameters())  # the master weights stay fp32


def test_varlen_attention_on_cuda_equals_one_forward_per_example(micro_model_dir):
    from transformers import AutoModelForCausalLM

    from trainer import attention
    from trainer.data import EncodedExample
    from trainer.packing import pack

    name = attention.register()
    model = AutoModelForCausalLM.from_pretrained(str(micro_model_dir), attn_implementation=name).cuda().eval()
    rng = random.Random(0)
    examples = [EncodedExample(input_ids=[rng.randrange(5, 1000) for _ in range(n)], labels=[rng.randrange(5, 1000) for _ in range(n)],
                               original_length=n) for n in (7, 31, 64, 3)]
    batch = pack(examples).to("cuda")
    with torch.no_grad():
        packed = model(**batch.model_kwargs()).logits[0]
        one_by_one = torch.cat([model(input_ids=torch.tensor([e.input_ids], device="cuda")).logits[0] for e in examples])
    torch.testing.assert_close(packed, one_by_one, atol=2e-4, rtol=2e-4)


def test_real_cuda_oom_is_classified_and_answered_by_halving_the_micro_batch():
    from core.state.child_result import ChildResult
    from safety import crash_detector

    try:
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # 1 PiB: a real allocator failure
    except torch.OutOfMemoryError as exc:
        message = f"out of memory: {exc}"
    else:  # pragma: no cover
        pytest.fail("a 1 PiB allocation succeeded")
    result = ChildResult(pid=1, exit_code=14, category="oom", message=message, finished_at=0.0)
    category, _ = crash_detector.classify(14, result, "", None, None)
    assert category == "cuda_oom"
    assert crash_detector.ACTIONS[category] == "shrink_batch_retry"


def test_daemon_halves_the_micro_batch_after_a_cuda_oom_and_completes(tmp_path, micro_model_dir):
    from tests.test_daemon_faults import Cadence, demo_rows

    c = Cadence(tmp_path / "oom", micro_model_dir, extra={"training.micro_batch_tokens": 256}, fault="oom:2")
    try:
        c.drop("a.jsonl", demo_rows(80, 3))
        c.start()
        c.wait(lambda: c.files("recently_completed") == ["a.jsonl"], 300, "file completed after the OOM retry")
        shrunk = c.events("batch_shrunk")
        assert [(e["micro_batch_tokens"], e["accumulation"]) for e in shrunk] == [(128, 2)]
        crashes = [json.loads(line) for line in (c.layout.status / "crash_history.jsonl").read_text().splitlines()]
        assert [x["category"] for x in crashes] == ["cuda_oom"]
    finally:
        c.close()


def test_async_checkpoints_are_on_by_default_on_cuda_and_equal_synchronous_ones(make_config, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    # two trainings compared: CUDA's atomics (embedding backward) would otherwise differ run to run
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)

    from trainer import TrainerEngine, list_checkpoints

    data = write_chat(tmp_path / "data.jsonl", 80)
    over = {"training.micro_batch_tokens": 256, "training.save_steps": 2, "training.save_total_limit": 100,
            "training.eval_split_fraction": 0.0, "model.dtype": "float32"}
    runs = {}
    for mode in ("auto", "off"):
        cfg = make_config({**over, "training.async_checkpoint": mode}, base_dir=tmp_path / mode)
        engine = TrainerEngine(cfg).setup()
        assert engine._async_checkpoints() == (mode == "auto")
        engine.train_file(data)
        engine.close()
        runs[mode] = {c.step: load_file(str(c.path / "model.safetensors")) for c in list_checkpoints(cfg.layout.current_model)}
    assert runs["auto"].keys() == runs["off"].keys() and len(runs["off"]) > 2
    torch.use_deterministic_algorithms(False)
    for step, tensors in runs["auto"].items():
        for name, tensor in tensors.items():
            torch.testing.assert_close(tensor, runs["off"][step][name], atol=1e-6, rtol=1e-6, msg=f"{step} {name}")


# ---- vLLM on the GPU: a swap under load ---------------------------------------------------------------------
# Two vLLM servers share the GPU during a swap (the standby starts beside the active version), so each may take at
# most this fraction of its memory (vLLM's default, 0.9, leaves no room for the standby).
VLLM_GPU_MEMORY_UTILIZATION = "0.4"


@pytest.fixture(scope="module")
def vllm_front(tmp_path_factory, tiny_model_dir):
    from core.config import VLLM_DEFAULT_ARGS
    from tests.vllm_support import Front, front_config, require_vllm

    require_vllm()
    srv = Front(tmp_path_factory.mktemp("vllm-gpu-front"), front_config(
        tiny_model_dir, vllm_args=[*VLLM_DEFAULT_ARGS, "--gpu-memory-utilization", VLLM_GPU_MEMORY_UTILIZATION]))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.close()


def test_vllm_swap_under_load_then_rollback_on_cuda(vllm_front, tiny_model_dir, tmp_path):
    """tests/test_vllm_engine.py's swap under load (8 streaming clients, a new version verified, started and
    flipped to, every stream whole, the old server drained and stopped, then a rollback), on the GPU: that test is
    not run on the CPU box (xfail, issue 15), so this is where the vLLM swap under load is proven."""
    from tests.test_vllm_engine import test_swap_under_load_then_rollback as swap_under_load_then_rollback

    swap_under_load_then_rollback(vllm_front, tiny_model_dir, tmp_path)
