"""`cadence import whatsapp`: the command line of data_manager.importers.whatsapp (whatsApp chat export (.txt) -> chat_sft_v1 conversations in one person's voice.)

Run as:
    cadence import whatsapp CHAT.txt --me "Alice" --out alice.jsonl
    cadence import whatsapp CHAT.txt --me "Alice" --partner "Bob" --silence-hours 4 --inbox
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_manager.importers.common import ImportFailed, add_output_args, emit
from data_manager.importers.whatsapp import import_whatsapp


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Turn a WhatsApp chat export (.txt) into chat_sft_v1 JSONL in one person's voice.")
    parser.add_argument("chat", help="the exported .txt (Android or iOS, any date/clock style)")
    parser.add_argument("--me", required=True, help="the person whose voice is learned (their replies become 'assistant')")
    parser.add_argument("--partner", help="group chats: keep only this person's messages as 'user' (default: everyone else, name-prefixed)")
    parser.add_argument("--silence-hours", type=float, default=6.0, help="start a new conversation after this much silence (default 6)")
    parser.add_argument("--date-order", choices=["auto", "dmy", "mdy"], default="auto",
                        help="when no date decides it (no field > 12): auto = month-first with a 12 h clock, else day-first")
    parser.add_argument("--max-pairs", type=int, default=10, help="at most this many user/assistant pairs per example (0 = no limit)")
    parser.add_argument("--system", help="system prompt put first in every example")
    add_output_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = import_whatsapp(args.chat, args.me, partner=args.partner, silence_hours=args.silence_hours,
                                 date_order=args.date_order, max_pairs=args.max_pairs or None, system_prompt=args.system)
    except ImportFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.chat}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    d = result.stats["dropped"]
    print(f"{result.stats['messages']} messages, {result.stats['kept_messages']} kept, dropped {d or 'none'}; "
          f"{result.stats['conversations']} conversation(s)")
    return emit(args, result, Path(args.chat), "whatsapp")
