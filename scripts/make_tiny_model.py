"""Build a random-init Qwen3 model with a locally trained BPE tokenizer and a ChatML template.

No hub access: the tokenizer is trained in-process on a generated corpus
(English words, digits, the circled binary digits, JSON punctuation, ChatML
markers), so every built-in skill tokenises compactly. The default preset is
small enough to train on 2 CPU cores in minutes; `--preset qwen3-0.6b` builds
a random model with Qwen3-0.6B's exact architecture for realistic-size
benchmarks of save, load and deploy.

Run as:
    python3 scripts/make_tiny_model.py --out models/base
    python3 scripts/make_tiny_model.py --preset qwen3-0.6b --out /tmp/qwen3-0.6b-random
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Plain added tokens (not special: they must survive decoding), as in Qwen3.
ADDED_TOKENS = ["<think>", "</think>"]

# Split digits one by one (arithmetic), words with an optional leading space,
# punctuation runs and newlines: the same kind of rule Qwen2/3 use.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

PRESETS = {
    # ~4M parameters: learns a level-1 skill on 2 cores in minutes.
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                 tie_word_embeddings=True, rope_theta=10000.0),
    # Minimal model for unit tests (well under a second to build and run).
    "micro": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                  tie_word_embeddings=True, rope_theta=10000.0),
    # Qwen3-0.6B's architecture exactly (random weights).
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       tie_word_embeddings=True, rope_theta=1000000.0),
}

_WORDS = (
    "the a an is are was were be to of and in that have it for not on with he as you do at this but his by from "
    "they we say her she or will my one all would there their what so up out if about who get which go me when "
    "make can like time no just him know take people into year your good some could them see other than then now "
    "look only come its over think also back after use two how our work first well way even new want because any "
    "these give day most us answer question think solve add subtract multiply number binary result word puzzle "
    "syllable clue all some none every therefore true false yes no cat dog bird fish animal mammal reptile plant "
    "tree red blue green small large fast slow hello thanks please sure step first second third final output "
    "input list sum difference product carry bit bits digit digits zero one two three four five six seven eight nine ten"
).split()


def _corpus(seed: int = 0, lines: int = 6000):
    rng = random.Random(seed)
    circled = "⓪①"
    for _ in range(lines):
        kind = rng.random()
        if kind < 0.45:
            yield " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14))).capitalize() + rng.choice(".?!:")
        elif kind < 0.65:
            a, b = rng.randint(0, 2 ** 12), rng.randint(0, 2 ** 12)
            yield f"{a:b} + {b:b} = {a + b:b}; {a} * {b} = {a * b}"
        elif kind < 0.75:
            yield "".join(rng.choice(circled) for _ in range(rng.randint(2, 16)))
        elif kind < 0.9:
            w = rng.choice(_WORDS)
            yield json.dumps({"solutions": {"1": {"word": w, "syllables": [w[:2], w[2:]]}}})
        elif kind < 0.95:
            yield "\n".join(f"{role}\n" + " ".join(rng.choice(_WORDS) for _ in range(4)) for role in ("system", "user", "assistant"))
        else:
            yield "<think>\n" + " ".join(rng.choice(_WORDS) for _ in range(6)) + "\n</think>\n\n" + rng.choice(_WORDS)


def build_tokenizer(vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 8192) - len(ADDED_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=None,
        model_max_length=PRESETS["tiny"]["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(ADDED_TOKENS, special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


OVERRIDABLE = ("num_hidden_layers",)


def build_model(out: str | Path, preset: str = "tiny", seed: int = 0, max_length: int | None = None,
                overrides: dict | None = None) -> Path:
    """Write a loadable HF model folder (config, safetensors, tokenizer, generation config) to `out`.
    `overrides` changes preset fields named in OVERRIDABLE (e.g. fewer layers at the same widths)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config

    out = Path(out)
    arch = dict(PRESETS[preset])
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise ValueError(f"preset override {key!r} is not supported (supported: {', '.join(OVERRIDABLE)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"preset override {key}={value!r}: must be a positive integer")
        arch[key] = value
    tokenizer = build_tokenizer(arch["vocab_size"])
    if preset != "qwen3-0.6b":
        arch["vocab_size"] = -(-len(tokenizer) // 64) * 64  # round up to a multiple of 64
    if max_length:
        arch["max_position_embeddings"] = max_length
    rope_theta = arch.pop("rope_theta")
    config = Qwen3Config(
        **arch,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        rms_norm_eps=1e-6,
        hidden_act="silu",
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    tmp = out.with_name(out.name + ".tmp-build")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a random-init Qwen3 model with a locally trained BPE tokenizer and a ChatML template.")
    parser.add_argument("--out", default="models/base", help="output folder (default: models/base)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="architecture (default: tiny, ~4M params)")
    parser.add_argument("--seed", type=int, default=0, help="weight init seed")
    parser.add_argument("--layers", type=int, default=None,
                        help="override the preset's num_hidden_layers (same widths, fewer or more layers)")
    parser.add_argument("--if-absent", action="store_true", help="do nothing when OUT already holds a model")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.if_absent and (out / "config.json").exists():
        print(f"{out}: model present, left as is")
        return 0
    overrides = {"num_hidden_layers": args.layers} if args.layers is not None else None
    try:
        build_model(out, args.preset, args.seed, overrides=overrides)
    except ValueError as exc:
        parser.error(str(exc))
    n = sum(1 for _ in out.iterdir())
    layers = f", {args.layers} layers" if args.layers is not None else ""
    print(f"built {args.preset} model{layers} in {out} ({n} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
