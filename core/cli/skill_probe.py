"""`cadence skills probe`: the command line of data_manager.skill_api_client (client for Skill API servers, built-in and external alike (data_manager/SKILL_API.md).)

Run as:
    cadence skills probe URL [LEVEL]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from data_manager.skill_api_client import SkillAPIError, SkillClient


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Probe a Skill API server: health, info, levels and one sample.")
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:8090")
    parser.add_argument("level", nargs="?", type=int, default=1, help="level of the sample (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with SkillClient(args.url, retries=0) as client:
        if not client.health():
            print(f"{args.url}: not healthy", file=sys.stderr)
            return 1
        try:
            print(json.dumps({"info": client.info(), "levels": client.levels().levels,
                              "sample": client.generate(args.level, 1, seed=0)[0]}, indent=2, ensure_ascii=False))
        except SkillAPIError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0
