"""`cadence export`: the command line of management.export (take a model out of Cadence: a merged HF safetensors folder, or a GGUF for llama.cpp / Ollama.)

Run as:
    cadence export latest --out exports/hf --format hf
    cadence export v003 --out exports/gguf --format gguf --quant q8_0 --ollama
    cadence export path/to/adapter --base models/base --out exports/merged --format hf
"""
from __future__ import annotations

import argparse
import logging
import sys

from core.config import ConfigError, add_config_args, config_from_args
from management.export import FORMATS, KQUANT_NOTE, QUANTS, ExportError, export, resolve_source


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Export a checkpoint, version or LoRA adapter as a merged HF folder or a GGUF (+ Ollama Modelfile).",
                                     epilog=KQUANT_NOTE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="CHECKPOINT_OR_VERSION",
                        help="a folder, a version (v003 / 3 / full name), checkpoint-<step> or 'latest'")
    parser.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    parser.add_argument("--format", choices=FORMATS, default="hf")
    parser.add_argument("--quant", choices=QUANTS, default="f16", help="GGUF tensor type for matrices (default f16)")
    parser.add_argument("--ollama", action="store_true", help="also write an Ollama Modelfile (GGUF only)")
    parser.add_argument("--base", help="base model for a LoRA adapter (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--name", help="general.name in the GGUF (default: the source folder name)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        source = resolve_source(args.source, cfg, args.base)
        summary = export(source, args.out, args.format, args.quant, args.ollama, args.force, args.name)
    except (ExportError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = f"{args.format}" + (f" {args.quant}" if args.format == "gguf" else "")
    extra = f", {len(summary['tensors'])} tensors" if "tensors" in summary else ""
    print(f"exported {summary['source']} ({summary['kind']}) as {what} to {summary['out']}{extra}"
          + (" with an Ollama Modelfile" if args.ollama else ""))
    return 0
