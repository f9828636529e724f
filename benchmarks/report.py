"""Write a benchmark's result table into docs/benchmarks.md, with how, where and when it was measured.

Figures in the docs are written by the script that measured them, never typed
in: a benchmark takes `BenchmarkRun.start(name)` before it measures anything
(the load average before) and, when run with --write-docs, ends with
`run.write_docs(title, headers, rows, notes)`. That replaces the region between
`<!-- benchmark:NAME begin -->` and `<!-- benchmark:NAME end -->` in
docs/benchmarks.md (a new section at the end when the page has none yet) with
the table and its provenance: the exact command, the date, the CPU model, the
core count, the load average before and after, and the git commit at the start
(marked when the work tree had uncommitted changes). The rest of the page is left as it was.

Library only; the benchmarks in this folder call it.
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_PAGE = REPO_ROOT / "docs" / "benchmarks.md"


def begin_marker(name: str) -> str:
    return f"<!-- benchmark:{name} begin: written by the script with --write-docs, do not edit -->"


def end_marker(name: str) -> str:
    return f"<!-- benchmark:{name} end -->"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit(repo: Path = REPO_ROOT) -> str:
    """HEAD of the repository, with a note when tracked files had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" (with uncommitted changes)" if dirty else "")


def command_line(argv: list[str]) -> str:
    """The command as typed from the repository root: `python benchmarks/x.py --flag ...`."""
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *argv[1:]])


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("\n", " ").replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str, title: str) -> str:
    """`text` with NAME's region replaced by `body`; a page without the region gets a new section at its end."""
    begin, end = begin_marker(name), end_marker(name)
    n_begin, n_end = text.count(begin), text.count(end)
    if n_begin == n_end == 0:
        return text.rstrip("\n") + f"\n\n## {title}\n\n{begin}\n{body.strip()}\n{end}\n"
    if n_begin != 1 or n_end != 1 or text.index(end) < text.index(begin):
        raise ValueError(f"docs/benchmarks.md: the markers of {name!r} must appear once each, begin before end")
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{rest.split(end, 1)[1]}"


@dataclass
class BenchmarkRun:
    """One run of a benchmark script: when it began, the load then, and the command that started it."""

    name: str
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)
    commit: str = field(default_factory=git_commit)  # taken at the start: the code that ran

    @classmethod
    def start(cls, name: str, argv: list[str] | None = None) -> "BenchmarkRun":
        return cls(name, list(argv) if argv is not None else list(sys.argv))

    def provenance(self) -> list[str]:
        load_after = os.getloadavg()
        fmt = lambda load: " / ".join(f"{x:.2f}" for x in load)
        return [f"- command: `{command_line(self.argv)}`",
                f"- date: {self.started.strftime('%Y-%m-%d %H:%M UTC')} "
                f"({(datetime.now(timezone.utc) - self.started).total_seconds() / 60:.1f} min)",
                f"- host: {cpu_model()}, {os.cpu_count()} cores ({platform.system()} {platform.release()})",
                f"- load average (1 / 5 / 15 min): {fmt(self.load_before)} before, {fmt(load_after)} after",
                f"- commit: {self.commit}"]

    def render(self, title: str, headers: list[str], rows: list[list[Any]], notes: list[str] = ()) -> str:
        parts = [f"**{title}**", "", markdown_table(headers, rows)]
        if notes:
            parts += [""] + [f"{n}" for n in notes]
        parts += ["", "Measured by:", *self.provenance()]
        return "\n".join(parts)

    def write_docs(self, title: str, headers: list[str], rows: list[list[Any]], notes: list[str] = (),
                   page: Path = BENCHMARKS_PAGE, section: str | None = None) -> Path:
        """Put the table into `page` (atomically: temp file, fsync, rename) and say so on stdout. `section` names the
        region when one script writes more than one table (default: the script's name)."""
        from core.atomic_io import atomic_write_text

        text = page.read_text(encoding="utf-8") if page.exists() else "# Benchmarks\n"
        atomic_write_text(page, replace_section(text, section or self.name, self.render(title, headers, rows, notes),
                                                f"`benchmarks/{self.name}.py`"))
        print(f"results written to {page}")
        return page
