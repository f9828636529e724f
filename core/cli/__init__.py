"""`cadence`: the one command for everything a user runs (the `[project.scripts]` entry point).

Each subcommand is a thin parser in its own module here over one library call;
this module only maps the words to those modules and imports the one asked
for, so `cadence --help` and `cadence SUB --help` answer without importing
torch or the library behind the other subcommands.

Run as:
    cadence --help
    cadence SUBCOMMAND [ARGS ...]        (or: python -m core.cli SUBCOMMAND ...)
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    module: str                 # core.cli.<module>, whose main(argv, prog) runs it
    summary: str
    prefix: tuple[str, ...] = ()  # argv words put first (`cadence pause` = `cadence control pause`)


COMMANDS = [
    Command(("start",), "services", "start Cadence's processes (watchdog + daemon, monitor, lifecycle, skills, inference)",
            ("start",)),
    Command(("stop",), "services", "stop them gracefully (watchdog first, the daemon checkpoints)", ("stop",)),
    Command(("status",), "services", "which processes are running, by recorded pid", ("status",)),
    Command(("follow",), "follow", "print training progress every few seconds"),
    Command(("control",), "control", "pause / resume / stop / skip / clear / status of the training daemon"),
    Command(("pause",), "control", "same as `control pause`", ("pause",)),
    Command(("resume",), "control", "same as `control resume`", ("resume",)),
    Command(("queue",), "queue", "the training queue: add / status / list / show / set-priority / retry / remove"),
    Command(("ingest",), "ingest", "watch inbox/ and queue or reject every file dropped there"),
    Command(("validate",), "validate", "validate one JSONL training file and print its report"),
    Command(("dataset",), "dataset", "check, fix, dedupe and measure JSONL training files"),
    Command(("train",), "train", "train one JSONL file with the engine, no daemon"),
    Command(("daemon",), "daemon", "run the training daemon in the foreground"),
    Command(("watchdog",), "watchdog", "run the watchdog that restarts the daemon"),
    Command(("config",), "config", "validate config.json and print the effective configuration (--schema)"),
    Command(("check-config",), "check_config", "check config.json against the run on disk (critical keys, disk)"),
    Command(("crashes",), "crashes", "classified training-child crashes"),
    Command(("stuck",), "stuck", "check the training child's heartbeat once (--kill a stuck one)"),
    Command(("import", "generic"), "import_generic", "CSV/TSV/JSON/JSONL -> chat_sft_v1 JSONL"),
    Command(("import", "whatsapp"), "import_whatsapp", "a WhatsApp chat export -> chat_sft_v1 JSONL"),
    Command(("export",), "export", "a checkpoint or version as a merged HF folder or a GGUF (+ Ollama Modelfile)"),
    Command(("serve",), "serve", "run the inference server (same as python -m inference)"),
    Command(("monitor",), "monitor", "run the monitor web UI (same as python -m monitoring)"),
    Command(("monitor-demo",), "monitor_demo", "fill a folder with a synthetic run to look at in the monitor"),
    Command(("lifecycle",), "lifecycle", "run the lifecycle worker: compare, deploy, retention, disk (python -m management)"),
    Command(("compare",), "compare", "score checkpoints, rank them, show the champion"),
    Command(("deploy",), "deploy", "deploy a checkpoint, recover, roll back, deployment status and history"),
    Command(("versions",), "versions", "model versions: list / create / restore / rollback / delete"),
    Command(("backup",), "backup", "hash-verified backups of model folders"),
    Command(("disk",), "disk", "disk status, and free space in a safe order"),
    Command(("retention",), "retention", "apply checkpoint retention"),
    Command(("data",), "data", "the curriculum data manager: status / generate / tick / prune / evalsets"),
    Command(("curriculum",), "curriculum", "show or override the curriculum levels"),
    Command(("skills", "serve"), "skill_server", "serve a built-in skill (same as python -m data_manager.skills)"),
    Command(("skills", "probe"), "skill_probe", "probe a Skill API server: health, info, levels, one sample"),
    Command(("skills", "learnability"), "learnability", "check that level 1 of the built-in skills suits the tiny model"),
]


def _usage(prefix: tuple[str, ...] = ()) -> str:
    rows = [c for c in COMMANDS if c.words[:len(prefix)] == prefix]
    width = max(len(" ".join(c.words[len(prefix):])) for c in rows)
    head = " ".join(("cadence", *prefix))
    lines = [f"usage: {head} SUBCOMMAND [ARGS ...]   ({head} SUBCOMMAND --help for its options)", "", "subcommands:"]
    lines += [f"  {' '.join(c.words[len(prefix):]):<{width}}  {c.summary}" for c in rows]
    return "\n".join(lines)


def find(argv: list[str]) -> tuple[Command | None, tuple[str, ...]]:
    """The command named by argv's leading words, and the words matched (a group name alone matches no command)."""
    for c in sorted(COMMANDS, key=lambda c: -len(c.words)):
        if tuple(argv[:len(c.words)]) == c.words:
            return c, c.words
    group = tuple(argv[:1]) if argv and any(c.words[0] == argv[0] for c in COMMANDS) else ()
    return None, group


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, words = find(argv)
    if command is None:
        if not argv or argv[0] in ("-h", "--help") or (words and argv[len(words):len(words) + 1] in ([], ["-h"], ["--help"])):
            print(_usage(words))
            return 0
        print(_usage(words), file=sys.stderr)
        print(f"\ncadence: error: unknown subcommand {' '.join(argv[:len(words) + 1])!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"core.cli.{command.module}")
    return module.main([*command.prefix, *argv[len(words):]], prog=" ".join(("cadence", *words)))
