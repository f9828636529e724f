"""`cadence import generic`: the command line of data_manager.importers.generic (generic CSV / TSV / JSON / JSONL instruction data -> chat_sft_v1 JSONL.)

Run as:
    cadence import generic data.csv --out data.jsonl
    cadence import generic sharegpt.json --skip-bad --inbox --priority high
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_manager.importers.common import ImportFailed, add_output_args, emit
from data_manager.importers.generic import FORMATS, import_generic


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Convert CSV/TSV/JSON/JSONL (prompt/response, instruction/input/output, question/answer, "
                    "HF messages, ShareGPT conversations) into chat_sft_v1 JSONL.")
    parser.add_argument("file")
    parser.add_argument("--format", choices=FORMATS, help="input format (default: from the extension)")
    parser.add_argument("--skip-bad", action="store_true", help="skip records that cannot be converted (listed) instead of failing")
    add_output_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = import_generic(args.file, args.format, skip_bad=args.skip_bad)
    except ImportFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return emit(args, result, Path(args.file), "generic")
