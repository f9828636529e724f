"""`cadence dataset`: check, repair and measure a JSONL training file with the daemon's own validators.

    validate  every check the file meets on its way into the queue (arrival, QUICK,
              STANDARD with the model's tokenizer; --deep adds DEEP; --queue checks
              for the same content already queued); exit 1 when it would be rejected
    fix       repair BOM/encoding, role names, text-part lists, control characters,
              unknown keys, leading assistant / trailing user turns; drop rows that
              cannot be repaired; every change reported with its line
    dedupe    drop exact and normalised duplicates (first kept), report each
    stats     counts, turns, token lengths (min/median/p95/p99/max) and supervised tokens

Run as:
    cadence dataset validate FILE [FILE ...] [--deep] [--quick] [--queue] [--schema ID] [--json]
    cadence dataset fix FILE [--out PATH | --in-place] [--json]
    cadence dataset dedupe FILE [--out PATH | --in-place] [--exact-only] [--json]
    cadence dataset stats FILE [--model DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.config import add_config_args, config_or_exit
from core.validation.spec import UnknownSchemaError
from core.validation.validator import DataValidator
from data_manager.dataset_tools import dedupe_file, file_stats, fix_file, validate_file

logger = logging.getLogger(__name__)


def _out_path(args) -> Path | None:
    src = Path(args.file)
    if args.in_place:
        return src
    if args.out:
        return Path(args.out)
    name = src.name[:-len(".jsonl")] if src.name.endswith(".jsonl") else src.stem
    return src.with_name(f"{name}.{'fixed' if args.command == 'fix' else 'deduped'}.jsonl")


def cmd_validate(args, cfg) -> int:

    level = "quick" if args.quick else "deep" if args.deep else "standard"
    validator = DataValidator(cfg)
    worst = 0
    reports = []
    for f in args.files:
        rep = validate_file(f, cfg, schema_id=args.schema, level=level, validator=validator, check_queue=args.queue)
        reports.append(rep.to_dict())
        if not args.json:
            print(rep.summary())
            for g in sorted(rep.problems.values(), key=lambda g: (g.severity != "error", g.rule)):
                for entry in g.lines:
                    where = f"line {entry['line']}" if entry.get("line") else "file"
                    print(f"  {g.severity:7} {g.rule:22} {where}: {entry['message'][:200]}")
                if g.count > len(g.lines):
                    print(f"  ... {g.count - len(g.lines)} more {g.rule}")
        worst = max(worst, 0 if rep.ok else 1)
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2, default=str))
    return worst


def cmd_fix(args, cfg) -> int:
    out = None if args.dry_run else _out_path(args)
    result = fix_file(args.file, out, cfg, schema_id=args.schema)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for c in result.changes:
            where = f"line {c['line']}" if c["line"] else "file"
            print(f"{where}: {c['action']}: {c['message']}")
        if result.fatal:
            print(f"{args.file}: {result.fatal}")
        else:
            print(f"{args.file}: {result.rows_in} row(s) in, {result.rows_out} out, {result.dropped} dropped, "
                  f"{len(result.changes)} change(s)" + (f" -> {out}" if out and result.rows_out else ""))
    return 1 if result.fatal or not result.rows_out else 0


def cmd_dedupe(args, cfg) -> int:
    out = None if args.dry_run else _out_path(args)
    res = dedupe_file(args.file, out, normalise=not args.exact_only)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for r in res["removed"]:
            print(f"line {r['line']}: {r['kind']} duplicate of line {r['duplicate_of']}")
        print(f"{args.file}: {res['rows_in']} row(s), removed {res['exact_duplicates']} exact and "
              f"{res['normalised_duplicates']} normalised duplicate(s)" + (f" -> {out}" if out else ""))
    return 0


def cmd_stats(args, cfg) -> int:
    s = file_stats(args.file, cfg, schema_id=args.schema)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{s['file']} ({s['schema_id']}): {s['valid_rows']} valid row(s), {s['invalid_rows']} invalid, "
          f"{s['blank_lines']} blank line(s)")
    if "turns" in s:
        t = s["turns"]
        print(f"  messages {s['messages']} {s['roles']}; turns per example min {t['min']} median {t['median']} max {t['max']}; "
              f"{s['with_system']} with a system prompt")
    if s.get("length"):
        for key in ("length", "reply_length"):
            p = s[key]
            print(f"  {key.replace('_', ' '):13} tokens: min {p['min']} median {p['median']} p95 {p['p95']} "
                  f"p99 {p['p99']} max {p['max']}")
        print(f"  tokens {s['tokens']}, supervised {s['supervised_tokens']}; over max_length {s['max_length']}: "
              f"{s['over_max_length']}; suggested max_length {s['suggested_max_length']}")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1].split("Run as:")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--schema", help="dataset spec id (default: NAME.job.json beside the file, else daemon.default_schema)")
        p.add_argument("--model", help="model folder whose tokenizer is used (default: model.base_model)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        add_config_args(p)

    p = sub.add_parser("validate", help="full report from the daemon's validators")
    p.add_argument("files", nargs="+", metavar="FILE")
    lv = p.add_mutually_exclusive_group()
    lv.add_argument("--quick", action="store_true", help="QUICK only (no tokenizer)")
    lv.add_argument("--deep", action="store_true", help="also DEEP (duplicates, leakage, degenerate data)")
    p.add_argument("--queue", action="store_true", help="also report content already in the configured queue")
    common(p)
    for name, helptext in (("fix", "repair what is fixable, drop the rest, report every change"),
                           ("dedupe", "drop exact and normalised duplicates")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("file", metavar="FILE")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--out", help=f"output path (default: NAME.{'fixed' if name == 'fix' else 'deduped'}.jsonl beside FILE)")
        where.add_argument("--in-place", action="store_true", help="replace FILE (atomically)")
        where.add_argument("--dry-run", action="store_true", help="report only, write nothing")
        if name == "dedupe":
            p.add_argument("--exact-only", action="store_true", help="only byte-for-byte equal JSON rows")
        common(p)
    p = sub.add_parser("stats", help="counts and token lengths with the model's tokenizer")
    p.add_argument("file", metavar="FILE")
    common(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.model:
        args.overrides = [*args.overrides, f"model.base_model={Path(args.model).resolve()}"]
    cfg = config_or_exit(args)
    handler = {"validate": cmd_validate, "fix": cmd_fix, "dedupe": cmd_dedupe, "stats": cmd_stats}[args.command]
    try:
        return handler(args, cfg)
    except UnknownSchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {getattr(args, 'file', '')}: {exc}", file=sys.stderr)
        return 2

