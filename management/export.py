"""Take a model out of Cadence: a merged HF safetensors folder, or a GGUF for llama.cpp / Ollama.

Sources (CHECKPOINT_OR_VERSION): a folder path; a version under
models/versions/ (`v003`, `3`, the full folder name or its content id);
`checkpoint-<step>` or `latest` under models/current_model/. A folder with a
manifest.json is verified against it first (a damaged copy is never
exported). A source is one of:

* a full model folder (a full-FT checkpoint, a version, models/base): its
  model files are exported, never `training_state/`, `adapter/` or the
  manifest (a LoRA-mode checkpoint already holds the merged model on top);
* a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors):
  merged into its base model (`--base`, else the adapter's
  base_model_name_or_path) with peft's merge_and_unload.

`--format hf` writes the merged HF folder (safetensors, tokenizer, a fresh
manifest.json). `--format gguf` writes `model.gguf` for llama.cpp's "qwen3"
architecture with the `gguf` package: tensor names from gguf's own Qwen3
name map, the hyperparameter keys, and the tokenizer as gpt2-style BPE
(tokens, merges, token types, bos/eos/pad ids, chat template). `--quant f16`
keeps norms in F32 and every matrix in F16; `q8_0` quantises matrices with
gguf.quants. `--ollama` adds a `Modelfile` (FROM ./model.gguf, the ChatML
TEMPLATE in Go-template form, stop "<|im_end|>"). k-quants (Q4_K_M, Q5_K_M,
...) come from llama.cpp's `llama-quantize model.gguf model-Q4_K_M.gguf
Q4_K_M` on the f16 export. Everything is written to a temp folder and renamed.

Run as:
    cadence export latest --out exports/hf --format hf
    cadence export v003 --out exports/gguf --format gguf --quant q8_0 --ollama
    cadence export path/to/adapter --base models/base --out exports/merged --format hf
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.extras import require
from core.manifest import MANIFEST_NAME, ManifestError, verify_manifest, write_manifest
from core.state.trainer_state import STATE_FILE
from management.model_versioner import list_versions
from trainer.checkpoint import list_checkpoints

logger = logging.getLogger(__name__)

FORMATS = ("hf", "gguf")
QUANTS = ("f16", "q8_0")
SKIP_DIRS = {"training_state", "adapter"}
SKIP_FILES = {"manifest.json", "training_args.bin", STATE_FILE, "optimizer.safetensors", "optimizer.pt",
              "scheduler.pt", "rng_state.pth"}
GGUF_NAME = "model.gguf"
# The pre-tokenizer regex of Qwen2/Qwen3 (llama.cpp's "qwen2" pre-tokenizer).
QWEN2_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                     r"|\s+(?!\S)|\s+")
OLLAMA_TEMPLATE = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                   '<|im_start|>assistant\n')


class ExportError(ValueError):
    """The source cannot be exported (the message says which path and why)."""


@dataclass
class Source:
    path: Path
    kind: str  # "model" | "adapter"
    base: Path | None = None


# ------------------------------------------------------------------ sources
def resolve_source(spec: str, cfg=None, base: str | Path | None = None) -> Source:
    """A path, a version (v003 / 3 / full name), checkpoint-<step> or 'latest' -> what to export."""
    path = Path(spec).expanduser()
    if not path.exists() and cfg is not None:
        path = _find_named(spec, cfg)
    if not path.is_dir():
        raise ExportError(f"{spec}: no such model folder, version or checkpoint")
    if (path / "adapter_config.json").is_file():
        if base is None:
            try:
                base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
            except (ValueError, KeyError) as exc:
                raise ExportError(f"{path}/adapter_config.json: no base_model_name_or_path ({exc}); pass --base") from None
        base_path = Path(base).expanduser()
        if not base_path.is_absolute() and cfg is not None:
            base_path = cfg.resolve(base_path)
        if not (base_path / "config.json").is_file():
            raise ExportError(f"{path}: base model {base_path} has no config.json; pass --base")
        return Source(path, "adapter", base_path)
    if not (path / "config.json").is_file() or not (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        raise ExportError(f"{path}: not a model folder (needs config.json and *.safetensors) nor a LoRA adapter "
                          "(adapter_config.json)")
    return Source(path, "model")


def _find_named(spec: str, cfg) -> Path:
    """A version by name, content id or number (v003 / 3), or a published checkpoint by name or 'latest'."""
    versions = list_versions(cfg)
    m = re.fullmatch(r"v?(\d+)", spec)
    for v in versions:
        if spec in (v["name"], v["content_id"]) or (m and v["number"] == int(m.group(1))):
            return Path(v["path"])
    ckpts = list_checkpoints(cfg.layout.current_model)
    if spec == "latest" and ckpts:
        return ckpts[-1].path
    for c in ckpts:
        if c.path.name == spec:
            return c.path
    known = [v["name"] for v in versions] + [c.path.name for c in ckpts]
    raise ExportError(f"{spec}: no such path, version or checkpoint (known: {', '.join(known) or 'none'})")


# ------------------------------------------------------------------------ HF
def _copy_model_files(src: Path, dst: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.is_dir() or p.name in SKIP_FILES or p.name.startswith("."):
            if p.is_dir() and p.name not in SKIP_DIRS:
                logger.info("export: skipping folder %s", p)
            continue
        shutil.copy2(p, dst / p.name)


def merge_adapter(adapter: Path, base: Path, dst: Path) -> None:
    """base + LoRA adapter -> one plain model folder (peft merge_and_unload), with the tokenizer."""
    import torch
    require("peft", why="merging a LoRA adapter")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with torch.no_grad():
        merged.save_pretrained(str(dst), safe_serialization=True)
    tok_src = adapter if (adapter / "tokenizer_config.json").is_file() else base
    AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(str(dst))


def materialise_hf(source: Source, dst: Path) -> None:
    """The exportable HF folder for `source` in `dst` (created)."""
    dst.mkdir(parents=True)
    if source.kind == "adapter":
        merge_adapter(source.path, source.base, dst)
    elif any(source.path.glob("*.safetensors")):
        _copy_model_files(source.path, dst)
    else:  # pytorch_model.bin: load and save as safetensors
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(str(source.path), dtype="auto").save_pretrained(str(dst), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(source.path)).save_pretrained(str(dst))


# ---------------------------------------------------------------------- GGUF
def _load_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    if not tensors:
        raise ExportError(f"{folder}: no *.safetensors weights")
    return tensors


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = config.get("rope_theta", params.get("rope_theta"))
    if theta is None:
        raise ExportError("config.json has no rope_theta")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in (None, "default"):
        raise ExportError(f"rope scaling {kind!r} is not exported; export a model without rope scaling")
    return float(theta)


def tokenizer_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id padded to vocab_size, token types, merges) of a byte-level BPE fast tokenizer, as llama.cpp reads them."""
    gguf = require("gguf", why="a GGUF export")

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "BPE":
        raise ExportError(f"tokenizer model {model.get('type')!r}: only byte-level BPE (gpt2 style) is exported")
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types: dict[int, int] = {}
    for added in state.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    if max(by_id) >= vocab_size:
        raise ExportError(f"tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}")
    tokens, token_types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            token_types.append(types.get(i, int(gguf.TokenType.NORMAL)))
        else:
            tokens.append(f"[PAD{i}]")
            token_types.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, token_types, merges


def _pretokenizer_regexes(tokenizer) -> list[str]:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    found = []

    def walk(node):
        if isinstance(node, dict):
            pattern = node.get("pattern")
            if isinstance(pattern, dict) and "Regex" in pattern:
                found.append(pattern["Regex"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(state.get("pre_tokenizer"))
    return found


def write_gguf(hf_dir: Path, out_file: Path, quant: str = "f16", name: str | None = None) -> dict:
    """Write a llama.cpp "qwen3" GGUF of the HF folder; returns a summary (tensors, types, metadata)."""
    gguf = require("gguf", why="a GGUF export")
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    if quant not in QUANTS:
        raise ExportError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    config = json.loads((hf_dir / "config.json").read_text())
    if config.get("model_type") != "qwen3":
        raise ExportError(f"{hf_dir}: model_type {config.get('model_type')!r}; only Qwen3 models are exported to GGUF")
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    vocab_size = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", False))
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    tokens, token_types, merges = tokenizer_vocab(tokenizer, vocab_size)
    if QWEN2_PRETOKENIZE not in _pretokenizer_regexes(tokenizer):
        logger.warning("%s: the pre-tokenizer regex is not Qwen2/3's; llama.cpp will split text with the 'qwen2' rule", hf_dir)

    writer = gguf.GGUFWriter(str(out_file), "qwen3")
    writer.add_name(name or hf_dir.name)
    writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads", n_head)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(vocab_size)
    file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # Qwen has no BOS; llama.cpp's converter uses <|endoftext|> and never adds it
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if eos is not None:
        writer.add_eos_token_id(int(eos))
    if isinstance(bos, int) and bos >= 0:
        writer.add_bos_token_id(bos)
    if pad is not None:
        writer.add_pad_token_id(int(pad))
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, n_layers)
    written: dict[str, dict] = {}
    for hf_name, tensor in sorted(_load_tensors(hf_dir).items()):
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        gg_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gg_name is None:
            raise ExportError(f"{hf_dir}: tensor {hf_name!r} has no llama.cpp qwen3 name")
        data = tensor.to(torch.float32).numpy()
        if data.ndim == 1:
            arr, qtype = data.astype(np.float32), gguf.GGMLQuantizationType.F32
            writer.add_tensor(gg_name, arr)
        elif quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gg_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            qtype = gguf.GGMLQuantizationType.F16
            writer.add_tensor(gg_name, data.astype(np.float16))
        written[gg_name] = {"hf_name": hf_name, "shape": list(data.shape), "type": qtype.name}
    if not tied and "output.weight" not in written:
        raise ExportError(f"{hf_dir}: untied model without lm_head.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": str(out_file), "quant": quant, "tensors": written, "vocab_size": vocab_size, "merges": len(merges)}


def modelfile_text(gguf_name: str = GGUF_NAME, system: str | None = None) -> str:
    """An Ollama Modelfile for a ChatML model (the template Cadence trains with)."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|endoftext|>"']
    return "\n".join(lines) + "\n"


KQUANT_NOTE = """k-quants (Q4_K_M, Q5_K_M, Q6_K, ...) are made by llama.cpp from the f16 export:
    llama-quantize model.gguf model-Q4_K_M.gguf Q4_K_M
(build llama.cpp, or use its release binaries; llama-quantize --help lists every type).
Then point the Modelfile's FROM line at the new file and run: ollama create NAME -f Modelfile
"""


# --------------------------------------------------------------------- export
def export(source: Source, out: str | Path, fmt: str = "hf", quant: str = "f16", ollama: bool = False,
           force: bool = False, name: str | None = None) -> dict:
    """Export `source` to the folder `out` (written to a temp folder, then renamed); returns a summary."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if ollama and fmt != "gguf":
        raise ExportError("--ollama needs --format gguf (Ollama runs GGUF files)")
    if (source.path / MANIFEST_NAME).is_file():  # checkpoints and versions: never export a damaged copy
        try:
            verify_manifest(source.path, model_only=True)
        except ManifestError as exc:
            raise ExportError(f"refusing to export: {exc}") from None
    out = Path(out).resolve()
    if out.exists() and not force:
        raise ExportError(f"{out} exists; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp-export", dir=out.parent))
    summary: dict = {"source": str(source.path), "kind": source.kind, "format": fmt, "out": str(out)}
    try:
        if fmt == "hf":
            hf = tmp / "model"
            materialise_hf(source, hf)
            write_manifest(hf, model_only=True, exported_from=str(source.path))
            final = hf
        else:
            final = tmp / "gguf"
            final.mkdir()
            if source.kind == "model":
                hf = source.path
            else:
                hf = tmp / "merged"
                materialise_hf(source, hf)
            summary.update(write_gguf(hf, final / GGUF_NAME, quant, name=name or source.path.name))
            summary["file"] = str(out / GGUF_NAME)
            (final / "README.txt").write_text(f"{GGUF_NAME}: {quant} GGUF of {source.path.name} (llama.cpp arch qwen3).\n\n"
                                              + KQUANT_NOTE)
            if ollama:
                (final / "Modelfile").write_text(modelfile_text())
        if out.exists():
            shutil.rmtree(out)
        final.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s (%s) to %s as %s", source.path, source.kind, out, fmt)
    return summary
