"""The GGUF export runs in llama.cpp itself (llama-cpp-python, built from source at install): same tokens, same
greedy generation as the HF model (f16 token for token, q8_0 within a stated tolerance), and the chat template
llama.cpp reads from the file, the Modelfile's template and the HF chat template render the same prompt."""
from __future__ import annotations

import re

import llama_cpp  # a test extra, compiled at install (scripts/setup.sh --test): missing means set-up is broken
import numpy as np
import pytest
import torch

from inference.sampling import byte_level_bytes
from management.export import export, resolve_source


STEPS = 24
CHATS = ([{"role": "user", "content": "hi"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a\nb"},
          {"role": "assistant", "content": "c"}, {"role": "user", "content": "Add one and one."}])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, micro_model_dir):
    """The micro model with larger weights, so greedy decoding varies token to token (the init's flat logits
    repeat one token and are full of near-ties)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(micro_model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    out = tmp_path_factory.mktemp("sharp")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(micro_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(model_dir))


def _exported(tmp_path_factory, model_dir, quant):
    out = tmp_path_factory.mktemp(f"gguf_{quant}") / "export"
    export(resolve_source(str(model_dir)), out, "gguf", quant, ollama=True)
    return out


def _llama(folder):
    return llama_cpp.Llama(model_path=str(folder / "model.gguf"), n_ctx=256, n_threads=2, n_batch=256,
                           verbose=False, seed=0, logits_all=True)  # logits_all: eval() keeps the logits


def _hf_greedy(model, ids, steps):
    """Greedy tokens and the logits each was picked from (no end-token stop: the whole trajectory is compared)."""
    toks, logits = [], []
    with torch.no_grad():
        for _ in range(steps):
            row = model(torch.tensor([ids + toks])).logits[0, -1].float()
            logits.append(row.numpy())
            toks.append(int(row.argmax()))
    return toks, np.stack(logits)


def _llama_logits(llm, ids, forced):
    """llama.cpp's next-token logits after `ids`, then after each token of `forced` (teacher forcing)."""
    llm.reset()
    llm.eval(ids)
    rows = [np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)]
    for tok in forced[:-1]:
        llm.eval([tok])
        rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
    return np.stack(rows)


def _llama_greedy(llm, ids, steps):
    llm.reset()
    llm.eval(ids)
    toks = []
    for _ in range(steps):
        toks.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([toks[-1]])
    return toks


def test_f16_generates_token_for_token_like_hf(tmp_path_factory, model_dir, hf):
    model, tok = hf
    llm = _llama(_exported(tmp_path_factory, model_dir, "f16"))
    text = "Hello world 123 <|im_start|>user\nbinary ⓪① <think>x</think><|im_end|>"
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"]
    assert llm.n_vocab() == model.config.vocab_size
    for messages in CHATS:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(ids, add_special_tokens=False)["input_ids"]
        want, want_logits = _hf_greedy(model, ids, STEPS)
        assert len(set(want)) > 5  # a varied trajectory, not one repeated token
        assert _llama_greedy(llm, ids, STEPS) == want
        # and the logits themselves (f16 weights, f32 activations): measured 0.2% of their range here
        got = _llama_logits(llm, ids, want)
        assert np.abs(got - want_logits).max() < 0.01 * np.abs(want_logits).max()


def test_q8_0_generates_within_tolerance(tmp_path_factory, model_dir, hf):
    """Q8_0 rounds every weight block to 8 bits: logits along the HF greedy path stay within 10% of their range
    (measured 4.4% here), and llama.cpp picks HF's token wherever HF's margin between its top two exceeds twice
    that step's logit error."""
    model, tok = hf
    llm = _llama(_exported(tmp_path_factory, model_dir, "q8_0"))
    ids = tok(tok.apply_chat_template(CHATS[1], add_generation_prompt=True, tokenize=False),
              add_special_tokens=False)["input_ids"]
    want, want_logits = _hf_greedy(model, ids, STEPS)
    got = _llama_logits(llm, ids, want)
    err = np.abs(got - want_logits).max(axis=1)
    assert err.max() < 0.10 * np.abs(want_logits).max()
    top2 = np.sort(want_logits, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * err
    assert clear.sum() >= STEPS // 2  # the check below is not vacuous
    assert (got.argmax(axis=1)[clear] == np.array(want)[clear]).all()


def _render_modelfile(template: str, messages: list[dict]) -> str:
    """The subset of Go's text/template the Modelfile uses: one range over .Messages with .Role and .Content."""
    m = re.fullmatch(r"\{\{- range \.Messages \}\}(.*?)\{\{ end \}\}(.*)", template, re.S)
    assert m, template
    body, tail = m.groups()
    return "".join(body.replace("{{ .Role }}", x["role"]).replace("{{ .Content }}", x["content"]) for x in messages) + tail


def test_chat_template_in_llama_cpp_and_modelfile_equal_hf(tmp_path_factory, model_dir, hf):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model, tok = hf
    folder = _exported(tmp_path_factory, model_dir, "f16")
    llm = _llama(folder)
    template = llm.metadata["tokenizer.chat_template"]  # what llama.cpp read from the file
    fmt = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="", add_generation_prompt=True)
    modelfile = re.search(r'TEMPLATE """(.*?)"""', (folder / "Modelfile").read_text(), re.S).group(1)
    for messages in CHATS:
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert fmt(messages=messages).prompt == want
        assert _render_modelfile(modelfile, messages) == want
    # llama.cpp's own chat completion (its template, its tokenizer, its sampler at temperature 0) answers like HF.
    ids = tok(tok.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False),
              add_special_tokens=False)["input_ids"]
    want, _ = _hf_greedy(model, ids, 8)
    eos = set(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    cut = next((i for i, t in enumerate(want) if t in eos), len(want))
    resp = llm.create_chat_completion(messages=CHATS[0], max_tokens=8, temperature=0.0, top_k=1, seed=0)
    # llama-cpp-python drops bytes that are not valid UTF-8 (a random model emits some); compare byte for byte
    raw = b"".join(byte_level_bytes(t) for t in tok.convert_ids_to_tokens(want[:cut]))
    assert resp["choices"][0]["message"]["content"] == raw.decode("utf-8", errors="ignore")
