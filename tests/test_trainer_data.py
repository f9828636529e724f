"""Label masks token by token, packing equivalence, profiles and schedules."""
from pathlib import Path

import pytest
import torch

from trainer.data import IGNORE_INDEX, encode_examples, load_tokenizer, supervised_text
from trainer.packing import pack, plan_steps
from trainer.profiles import ANS_END, ANS_START, STOP_EMOJIS, THINK_EMOJIS, apply_profile
from trainer.schedule import lr_factor

QWEN3_TEMPLATE = Path(__import__("trl").__file__).parent / "chat_templates" / "qwen3.jinja"


@pytest.fixture(scope="module")
def tok(micro_model_dir):
    return load_tokenizer(micro_model_dir)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def expect(tok, segments):
    """segments: [(text, supervised)] -> (input_ids, labels) built piece by piece."""
    input_ids, labels = [], []
    for text, sup in segments:
        piece = ids(tok, text)
        input_ids += piece
        labels += piece if sup else [IGNORE_INDEX] * len(piece)
    return input_ids, labels


def test_chatml_multi_turn_with_system_masks_every_assistant_turn(tok):
    row = {"messages": [
        {"role": "system", "content": "You add binary numbers."},
        {"role": "user", "content": "1 + 1 ="},
        {"role": "assistant", "content": "10"},
        {"role": "user", "content": "11 + 1 ="},
        {"role": "assistant", "content": "100"},
    ]}
    (ex,) = encode_examples([row], tok, "chat_sft_v1", 256)
    want_ids, want_labels = expect(tok, [
        ("<|im_start|>system\nYou add binary numbers.<|im_end|>\n<|im_start|>user\n1 + 1 =<|im_end|>\n<|im_start|>assistant\n", False),
        ("10<|im_end|>", True),
        ("\n<|im_start|>user\n11 + 1 =<|im_end|>\n<|im_start|>assistant\n", False),
        ("100<|im_end|>", True),
        ("\n", False),
    ])
    assert ex.input_ids == want_ids
    assert ex.labels == want_labels
    assert supervised_text(tok, ex) == "10<|im_end|>100<|im_end|>"


def test_stock_qwen3_template_think_blocks(tok):
    tok = load_tokenizer(Path(tok.name_or_path))
    tok.chat_template = QWEN3_TEMPLATE.read_text()
    row = {"messages": [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "<think>\nhidden reasoning\n</think>\n\nfirst answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "<think>\nvisible reasoning\n</think>\n\nsecond answer"},
    ]}
    (ex,) = encode_examples([row], tok, "chat_sft_v1", 512)
    # The template drops the reasoning of turns before the last user query and keeps the last one's:
    # exactly what it renders is what is supervised, in every assistant turn.
    want_ids, want_labels = expect(tok, [
        ("<|im_start|>user\nfirst question<|im_end|>\n<|im_start|>assistant\n", False),
        ("first answer<|im_end|>", True),
        ("\n<|im_start|>user\nsecond question<|im_end|>\n<|im_start|>assistant\n", False),
        ("<think>\nvisible reasoning\n</think>\n\nsecond answer<|im_end|>", True),
        ("\n", False),
    ])
    assert ex.input_ids == want_ids
    assert ex.labels == want_labels
    assert "hidden reasoning" not in tok.decode(ex.input_ids)


def test_stock_qwen3_template_injected_empty_think_is_part_of_the_answer(tok):
    tok = load_tokenizer(Path(tok.name_or_path))
    tok.chat_template = QWEN3_TEMPLATE.read_text()
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (ex,) = encode_examples([row], tok, "chat_sft_v1", 512)
    assert supervised_text(tok, ex) == "<think>\n\n</think>\n\na<|im_end|>"
    assert all(l == IGNORE_INDEX for l in ex.labels[: ids(tok, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n").__len__()])


def test_completion_v1_prompt_completion_and_text(tok):
    rows = [{"prompt": "Translate: cat ->", "completion": " dog"}, {"text": "all of this is learned"}]
    a, b = encode_examples(rows, tok, "completion_v1", 256)
    assert a.input_ids == ids(tok, "Translate: cat ->") + ids(tok, " dog") + [tok.eos_token_id]
    assert a.labels == [IGNORE_INDEX] * len(ids(tok, "Translate: cat ->")) + ids(tok, " dog") + [tok.eos_token_id]
    assert b.labels == b.input_ids == ids(tok, "all of this is learned") + [tok.eos_token_id]


def test_truncation_reports_zero_supervised_examples(tok):
    long_user = " ".join(["cat"] * 400)
    rows = [{"messages": [{"role": "user", "content": long_user}, {"role": "assistant", "content": "yes"}]},
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": "nope"}]
    ex, no_asst, bad = encode_examples(rows, tok, "chat_sft_v1", 64)
    assert ex.truncated and ex.n_tokens == 64 and ex.n_supervised == 0
    assert "no supervised tokens left after truncation" in ex.error
    assert "no assistant turn" in no_asst.error
    assert "messages" in bad.error


def test_packed_logits_equal_per_example_logits(micro_model_dir, tok):
    from transformers import AutoModelForCausalLM
    from trainer.attention import register

    rows = [{"messages": [{"role": "user", "content": "cat " * k}, {"role": "assistant", "content": "dog " * (k + 2)}]}
            for k in (1, 7, 3, 12)]
    examples = encode_examples(rows, tok, "chat_sft_v1", 256)
    batch = pack(examples)
    model = AutoModelForCausalLM.from_pretrained(micro_model_dir, attn_implementation=register()).eval()
    with torch.no_grad():
        packed = model(**batch.model_kwargs()).logits[0]
        single = torch.cat([model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples])
        naive = model(input_ids=batch.input_ids).logits[0]  # no boundaries: attention leaks across examples
    assert torch.allclose(packed, single, atol=1e-5), (packed - single).abs().max()
    assert not torch.allclose(naive, single, atol=1e-3)
    # targets never cross an example boundary
    bounds = batch.cu_seq_lens.tolist()
    for end in bounds[1:]:
        assert batch.targets[0, end - 1] == IGNORE_INDEX


def test_plan_is_deterministic_and_keeps_steps_under_oom_split():
    lengths = {i: 10 + (i * 37) % 90 for i in range(200)}
    a = plan_steps(lengths, 256, 2, 42, "file", epochs=2)
    b = plan_steps(lengths, 256, 2, 42, "file", epochs=2)
    halved = plan_steps(lengths, 128, 4, 42, "file", epochs=2)
    assert a == b
    flatten = lambda plan: [sorted(i for m in step for i in m) for step in plan]
    assert flatten(a) == flatten(halved)  # same examples in every optimizer step
    assert all(sum(lengths[i] for i in m) <= 128 or len(m) == 1 for step in halved for m in step)
    assert sorted(i for step in a for m in step for i in m) == sorted(list(lengths) * 2)


def test_schedules():
    assert lr_factor("constant", 0, 0, 10, 4) == 0.25
    assert lr_factor("constant", 500, 0, 10, 4) == 1.0
    f = [lr_factor("wsd", 100 + s, s, 10, 0, 0.2, 0.1) for s in range(10)]
    assert f[:8] == [1.0] * 8 and f[8] == pytest.approx(0.55) and f[9] == pytest.approx(0.1)


def test_profiles_deterministic_and_applied_to_half():
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"<think>x</think>a{i}"}]}
            for i in range(200)]
    out = apply_profile(rows, "emoji_think", seed=7)
    assert out == apply_profile(rows, "emoji_think", seed=7)
    marked = [r for r in out if r["messages"][1]["content"][0] in "".join(THINK_EMOJIS)]
    assert 70 < len(marked) < 130
    for r in marked:
        ans = r["messages"][1]["content"]
        assert "<think>" not in ans and any(ans.endswith(s * 2) for s in STOP_EMOJIS)
        assert "Think with" in r["messages"][0]["content"]
    r3 = apply_profile(rows[:1], "regime3")[0]["messages"]
    assert r3[0]["role"] == "system" and r3[-1]["content"].startswith(ANS_START) and r3[-1]["content"].endswith(ANS_END)
    assert rows[0]["messages"][1]["content"] == "<think>x</think>a0"  # input untouched


def test_varlen_flash_function_equals_per_segment_sdpa_forward_and_backward():
    """The one-node CPU varlen attention gives the per-segment SDPA loop's outputs and gradients (GQA, a
    one-token segment, a long one), so packing stays exact with it."""
    import torch.nn.functional as F

    from trainer.attention import _VarlenFlashCPU

    torch.manual_seed(0)
    sizes = [1, 7, 64, 3, 130]
    T = sum(sizes)
    q = torch.randn(1, 4, T, 16, requires_grad=True)
    k = torch.randn(1, 2, T, 16, requires_grad=True)
    v = torch.randn(1, 2, T, 16, requires_grad=True)
    out = _VarlenFlashCPU.apply(q, k, v, sizes, 0.25)
    ref = torch.cat([F.scaled_dot_product_attention(a, b, c, is_causal=True, scale=0.25, enable_gqa=True).transpose(1, 2)
                     for a, b, c in zip(q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2))], dim=1)
    assert out.shape == (1, T, 4, 16)
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    # and nothing leaks across segments: changing a later segment's keys leaves earlier outputs untouched
    k2 = k.detach().clone()
    k2[:, :, sizes[0] + sizes[1]:] += 1.0
    out2 = _VarlenFlashCPU.apply(q.detach(), k2, v.detach(), sizes, 0.25)
    assert torch.equal(out2[:, : sizes[0] + sizes[1]], out.detach()[:, : sizes[0] + sizes[1]])
