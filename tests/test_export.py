"""Export: HF folders (full-FT checkpoint, merged LoRA adapter), GGUF read back with gguf's reader, Ollama Modelfile."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.manifest import write_manifest
from management.export import ExportError, export, modelfile_text, resolve_source

REPO = Path(__file__).resolve().parent.parent
PROMPT_IDS = [[5, 6, 7, 8, 9, 100, 200, 300]]


def _hf_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in folder.glob("*.safetensors"):
        out.update({k: v.float().numpy() for k, v in load_file(str(f)).items()})
    return out


def _checkpoint(tmp_path: Path, model_dir: Path, name: str = "checkpoint-12") -> Path:
    ckpt = tmp_path / name
    shutil.copytree(model_dir, ckpt)
    (ckpt / "training_state").mkdir()
    (ckpt / "training_state" / "optimizer.safetensors").write_bytes(b"x" * 100)
    (ckpt / "training_state" / "trainer_state.json").write_text("{}")
    write_manifest(ckpt)
    return ckpt


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, micro_model_dir):
    """A small random (non-zero) LoRA adapter on every projection of the micro model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(micro_model_dir))
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.5)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(str(out))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(micro_model_dir)
    return out


def test_full_checkpoint_exports_model_files_only(tmp_path, micro_model_dir):
    from transformers import AutoModelForCausalLM

    ckpt = _checkpoint(tmp_path, micro_model_dir)
    out = tmp_path / "exported"
    summary = export(resolve_source(str(ckpt)), out, "hf")
    assert summary["kind"] == "model"
    names = sorted(p.name for p in out.iterdir())
    assert "training_state" not in names and "model.safetensors" in names and "tokenizer.json" in names
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert (out / "model.safetensors").read_bytes() == (micro_model_dir / "model.safetensors").read_bytes()
    AutoModelForCausalLM.from_pretrained(str(out))
    with pytest.raises(ExportError, match="exists"):
        export(resolve_source(str(ckpt)), out, "hf")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]  # no temp folder left behind
    with open(ckpt / "model.safetensors", "r+b") as fh:  # one flipped byte: the manifest no longer matches
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(ExportError, match="refusing to export: .*model.safetensors: blake3 mismatch"):
        export(resolve_source(str(ckpt)), tmp_path / "other", "hf")
    assert not (tmp_path / "other").exists()


def test_merged_lora_generates_like_base_plus_adapter(tmp_path, micro_model_dir, lora_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    summary = export(resolve_source(str(lora_adapter)), out, "hf")
    assert summary["kind"] == "adapter" and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(micro_model_dir)), str(lora_adapter)).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(micro_model_dir)).eval()
    ids = torch.tensor(PROMPT_IDS)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-5)
        assert not torch.allclose(plain(ids).logits, merged(ids).logits, atol=1e-3)  # the adapter does change the model
        g1 = merged.generate(ids, max_new_tokens=16, do_sample=False, min_new_tokens=16)
        g2 = with_adapter.generate(input_ids=ids, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    assert g1.tolist() == g2.tolist()


def _field(reader, key):
    return reader.fields[key].contents()


def test_gguf_f16_read_back(tmp_path, micro_model_dir):
    import gguf
    from transformers import AutoTokenizer

    out = tmp_path / "gguf"
    export(resolve_source(str(micro_model_dir)), out, "gguf", "f16", ollama=True)
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.txt", "model.gguf"]
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    config = json.loads((micro_model_dir / "config.json").read_text())
    layers = config["num_hidden_layers"]
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{t}.weight" for i in range(layers) for t in per_block}
    assert config["tie_word_embeddings"] and "output.weight" not in expected  # tied: llama.cpp reuses token_embd
    assert len(reader.tensors) == len(expected) == 2 + 11 * layers
    assert {t.name for t in reader.tensors} == expected
    hf = _hf_weights(micro_model_dir)
    name_of = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "attn_norm": "input_layernorm",
               "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
               "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for t in reader.tensors:
        parts = t.name.split(".")
        hf_name = (f"model.layers.{parts[1]}.{name_of[parts[2]]}.weight" if parts[0] == "blk" else f"{name_of[parts[0]]}.weight")
        w = hf[hf_name]
        assert list(reversed([int(x) for x in t.shape])) == list(w.shape), t.name  # GGUF lists dims innermost first
        assert t.tensor_type.name == ("F32" if w.ndim == 1 else "F16"), t.name
        np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w.astype(np.float16 if w.ndim == 2 else np.float32))
    tok = AutoTokenizer.from_pretrained(str(micro_model_dir))
    expect = {
        "general.architecture": "qwen3", "qwen3.block_count": layers, "qwen3.context_length": config["max_position_embeddings"],
        "qwen3.embedding_length": config["hidden_size"], "qwen3.feed_forward_length": config["intermediate_size"],
        "qwen3.attention.head_count": config["num_attention_heads"], "qwen3.attention.head_count_kv": config["num_key_value_heads"],
        "qwen3.attention.key_length": config["head_dim"], "qwen3.attention.value_length": config["head_dim"],
        "qwen3.rope.freq_base": config["rope_parameters"]["rope_theta"], "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.eos_token_id": tok.eos_token_id,
        "tokenizer.ggml.padding_token_id": tok.pad_token_id, "tokenizer.ggml.bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": tok.chat_template,
    }
    for key, value in expect.items():
        assert _field(reader, key) == pytest.approx(value) if isinstance(value, float) else _field(reader, key) == value, key
    assert _field(reader, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == config["vocab_size"]
    vocab = tok.get_vocab()
    assert all(tokens[i] == t for t, i in vocab.items())
    assert types[tok.convert_tokens_to_ids("<|im_end|>")] == int(gguf.TokenType.CONTROL)
    assert types[tok.convert_tokens_to_ids("<think>")] == int(gguf.TokenType.USER_DEFINED)
    assert types[vocab["the"]] == int(gguf.TokenType.NORMAL)
    # a model whose embedding has more rows than the tokenizer has tokens (Qwen3: 151936 vs 151669) gets [PADn]
    from management.export import tokenizer_vocab
    padded, padded_types, _ = tokenizer_vocab(tok, len(tok) + 3)
    assert padded[-3:] == [f"[PAD{len(tok) + i}]" for i in range(3)] and padded_types[-1] == int(gguf.TokenType.UNUSED)
    state = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in state]


def test_gguf_q8_0_dequantises_within_tolerance(tmp_path, micro_model_dir):
    import gguf
    from gguf.quants import dequantize

    out = tmp_path / "q8"
    summary = export(resolve_source(str(micro_model_dir)), out, "gguf", "q8_0")
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    hf = _hf_weights(micro_model_dir)
    quantised = 0
    for t in reader.tensors:
        w = hf[summary["tensors"][t.name]["hf_name"]]
        if w.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0, t.name
        quantised += 1
        deq = dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
        blocks = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True)
        err = np.abs(deq - w).reshape(-1, 32)
        # Q8_0: per block of 32 one f16 scale d = max|x|/127 and int8 steps: error <= d/2 plus the scale's f16 rounding
        d = blocks / 127
        d16 = d.astype(np.float16).astype(np.float32)
        assert (err <= 0.5 * d16 + 127 * np.abs(d16 - d) + 1e-7).all(), t.name
        assert np.sqrt(np.mean((deq - w) ** 2)) / np.sqrt(np.mean(w ** 2)) < 0.01, t.name
    assert quantised == 1 + 7 * json.loads((micro_model_dir / "config.json").read_text())["num_hidden_layers"]


def test_gguf_loads_back_in_transformers_gguf_reader(tmp_path, micro_model_dir, lora_adapter):
    """An independent reader of llama.cpp's names and layout (transformers' GGUF loader) gets the same model back."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ids = torch.tensor(PROMPT_IDS)
    for source, ref_dir, quant, tol in ((micro_model_dir, micro_model_dir, "f16", 2e-3),
                                        (lora_adapter, None, "q8_0", 5e-2)):
        out = tmp_path / f"g_{quant}"
        export(resolve_source(str(source)), out, "gguf", quant)
        if ref_dir is None:
            ref_dir = tmp_path / "merged_ref"
            export(resolve_source(str(source)), ref_dir, "hf")
        ref = AutoModelForCausalLM.from_pretrained(str(ref_dir)).eval()
        # transformers maps no head_dim for qwen3 GGUFs, so the config comes from the HF folder
        back = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model.gguf",
                                                    config=AutoConfig.from_pretrained(str(ref_dir))).eval()
        with torch.no_grad():
            a, b = ref(ids).logits, back(ids).logits
        assert (a - b).abs().max().item() < tol, quant
        if quant == "f16":  # q8_0 may flip near-ties of a random model's flat logits
            assert (a.argmax(-1) == b.argmax(-1)).all()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "g_f16"), gguf_file="model.gguf")
    ref_tok = AutoTokenizer.from_pretrained(str(micro_model_dir))
    text = "Hello world 123 <|im_start|>user\nbinary ⓪① <think>x</think><|im_end|>"
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]


def _render_ollama(template: str, messages: list[dict]) -> str:
    """The subset of Go's text/template the Modelfile uses: one range over .Messages with .Role and .Content."""
    m = re.fullmatch(r"\{\{- range \.Messages \}\}(.*?)\{\{ end \}\}(.*)", template, re.S)
    assert m, template
    body, tail = m.groups()
    return "".join(body.replace("{{ .Role }}", x["role"]).replace("{{ .Content }}", x["content"]) for x in messages) + tail


def test_modelfile_template_equals_chatml(micro_model_dir):
    from transformers import AutoTokenizer

    text = modelfile_text()
    assert text.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|im_end|>"' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    tok = AutoTokenizer.from_pretrained(str(micro_model_dir))
    for messages in ([{"role": "user", "content": "hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a\nb"},
                      {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]):
        assert _render_ollama(template, messages) == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_version_names_and_cli(tmp_path, make_config, micro_model_dir):
    cfg = make_config()
    versions = cfg.layout.versions
    shutil.copytree(micro_model_dir, versions / "v002_20261123_skills")
    write_manifest(versions / "v002_20261123_skills")
    cm = cfg.layout.current_model
    cm.mkdir(parents=True)
    for step in (5, 12):
        _checkpoint(cm, micro_model_dir, f"checkpoint-{step}")
    assert resolve_source("2", cfg).path.name == resolve_source("v002", cfg).path.name == "v002_20261123_skills"
    assert resolve_source("latest", cfg).path.name == "checkpoint-12"
    assert resolve_source("checkpoint-5", cfg).path.name == "checkpoint-5"
    with pytest.raises(ExportError, match=r"known: v002_20261123_skills, checkpoint-5, checkpoint-12"):
        resolve_source("v9", cfg)
    with pytest.raises(ExportError, match="not a model folder"):
        resolve_source(str(tmp_path), cfg)
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps({"paths": {"base_dir": str(cfg.layout.base_dir)}}))
    out = tmp_path / "ollama"
    r = subprocess.run([sys.executable, "-m", "core.cli", "export", "v2", "--out", str(out), "--format", "gguf", "--quant", "q8_0",
                        "--ollama", "--config", str(cfg_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "as gguf q8_0" in r.stdout and (out / "model.gguf").stat().st_size > 0
    assert (out / "Modelfile").read_text().startswith("FROM ./model.gguf")
    assert "llama-quantize model.gguf model-Q4_K_M.gguf Q4_K_M" in (out / "README.txt").read_text()
    r = subprocess.run([sys.executable, "-m", "core.cli", "export", "nope", "--out", str(tmp_path / "x"), "--config", str(cfg_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope: no such path, version or checkpoint" in r.stderr and "Traceback" not in r.stderr
