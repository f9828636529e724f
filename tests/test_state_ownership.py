"""core/state/ is the only owner of the shared files: a static check over the product's source.

Outside core/state/ (and core/config.py, whose Layout names the paths), no module may spell a shared file's name
(`"heartbeat.json"`, `".meta.json"`, ...) or pass a Layout path of a shared record to a file-opening call: it reads
and writes those files through the state module that owns them. Every StateFile's pattern is also checked to match
the Layout path it documents, so the registry and the Layout cannot drift apart.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.config import Layout
from core.state.registry import all_files, owner_of

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "trainer", "safety", "management", "monitoring", "data_manager", "inference", "scripts", "benchmarks")
ALLOWED = ("core/state/", "core/config.py")
# Layout paths that are shared records (folders such as layout.queue or layout.models are not).
RECORD_PATHS = ("training_status", "metrics", "events", "comparisons", "deployments", "deployment_state",
                "comparison_validation", "curriculum", "data_manager_state", "ladder_index")
OPENERS = {"open", "read_json", "atomic_write_json", "atomic_write_bytes", "atomic_write_text", "append_jsonl",
           "read_text", "write_text", "read_bytes", "write_bytes", "unlink", "replace", "rename"}


def _names() -> tuple[set[str], set[str]]:
    """Exact file names and name suffixes that only core/state/ may spell."""
    exact, suffixes = set(), set()
    for spec in all_files():
        last = spec.pattern.rsplit("/", 1)[-1]
        if not any(c in last for c in "*?["):
            exact.add(last)
        elif last.startswith("*") and not any(c in last[1:] for c in "*?[") and last.count(".") >= 2:
            suffixes.add(last[1:])  # "*.meta.json" -> ".meta.json"
    exact -= {"config.json", "manifest.json"}  # HF's config.json; the manifest's owner is core/manifest.py
    return exact, suffixes


def _sources():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not rel.startswith(ALLOWED) and rel != "core/manifest.py":
                yield rel, ast.parse(path.read_text(encoding="utf-8"), rel)


def _mentions_layout_record(node: ast.AST) -> str | None:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in RECORD_PATHS and "layout" in ast.unparse(sub.value).lower():
            return ast.unparse(sub)
    return None


def test_no_module_outside_core_state_spells_or_opens_a_shared_file():
    exact, suffixes = _names()
    assert exact and suffixes, "core/state's FILES lists are empty"
    problems = []
    for rel, tree in _sources():
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in exact or any(node.value.endswith(s) for s in suffixes):
                    problems.append(f"{rel}:{node.lineno}: spells the shared file name {node.value!r}")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if name in OPENERS:
                    target = _mentions_layout_record(func.value if isinstance(func, ast.Attribute) else node) or \
                        next((m for a in node.args if (m := _mentions_layout_record(a))), None)
                    if target:
                        problems.append(f"{rel}:{node.lineno}: {name}() on {target} (use its core/state module)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("attr", RECORD_PATHS)
def test_every_layout_record_path_has_an_owner(tmp_path, attr):
    layout = Layout.from_base(tmp_path)
    rel = getattr(layout, attr).relative_to(layout.base_dir).as_posix()
    assert owner_of(rel) is not None, f"layout.{attr} ({rel}) is in no core/state module's FILES"
