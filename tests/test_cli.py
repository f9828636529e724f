"""The `cadence` command: every --help without torch, the seed paths from another cwd, no import circle, no sys.path
edits outside the shims, optional extras named, a broken in-tree import crashing the daemon, status on a tmp base dir."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from core.cli import COMMANDS, find
from core.extras import MissingExtra, require

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["core", "trainer", "safety", "management", "monitoring", "data_manager", "inference"]
SHIMS = {"core/training_controller.py", "core/training_queue.py", "core/training_daemon.py", "safety/daemon_watchdog.py"}
# Prints whether torch was imported once `cadence ARGS --help` has answered (argparse exits with SystemExit(0)).
HELP_PROBE = """
import sys, time
t = time.perf_counter()
from core.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(f"\\nPROBE code={code} torch={'torch' in sys.modules} seconds={time.perf_counter() - t:.2f}")
"""


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **extra}


def test_the_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"cadence": "core.cli:main"}


@pytest.mark.parametrize("words", [()] + sorted({c.words for c in COMMANDS}) + [("import",), ("skills",)],
                         ids=lambda w: " ".join(w) or "cadence")
def test_every_help_answers_without_importing_torch(words):
    out = subprocess.run([sys.executable, "-c", HELP_PROBE, *words, "--help"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=120)
    probe = out.stdout.strip().splitlines()[-1]
    assert "usage:" in out.stdout and "PROBE code=0 torch=False" in probe, out.stdout[-2000:] + out.stderr[-2000:]
    print(" ".join(("cadence", *words, "--help")), probe.split()[-1])  # the time, for a person (not asserted)


def test_an_unknown_subcommand_is_refused_with_the_list():
    out = subprocess.run([sys.executable, "-m", "core.cli", "nope"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert out.returncode == 2 and "unknown subcommand 'nope'" in out.stderr and "queue" in out.stderr


def test_aliases_and_groups_map_to_their_module():
    assert find(["pause", "--reason", "x"])[0].prefix == ("pause",)
    assert find(["import", "whatsapp", "chat.txt"])[0].module == "import_whatsapp"
    assert find(["import"]) == (None, ("import",))


def _base(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"paths": {"base_dir": str(base)}}))
    return base / "config.json"


@pytest.mark.parametrize("seed", ["core/training_controller.py", "core/training_queue.py",
                                  "core/training_daemon.py", "safety/daemon_watchdog.py"])
def test_seed_paths_work_from_another_cwd(seed, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / seed), "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]


def test_seed_controller_and_queue_act_on_a_tmp_base_dir(tmp_path):
    conf = _base(tmp_path)
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                    {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                           for i in range(3)))
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=tmp_path, capture_output=True, text=True,  # noqa: E731
                                    timeout=120)
    out = run(str(REPO / "core/training_controller.py"), "pause", "--config", str(conf), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["requested"] == "pause"
    out = run(str(REPO / "core/training_queue.py"), "--config", str(conf), "add", str(src), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    listed = subprocess.run([sys.executable, "-m", "core.cli", "queue", "--config", str(conf), "list", "--json"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("data.jsonl", "normal")]


def test_cadence_status_and_control_status_on_a_tmp_base_dir(tmp_path):
    conf = _base(tmp_path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "core.cli", *a, "--config", str(conf)],  # noqa: E731
                                    cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    out = run("status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr
    out = run("control", "status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["state"], out.stderr
    out = subprocess.run([sys.executable, "-m", "core.cli", "queue", "--config", str(conf), "list", "--json"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr


# ------------------------------------------------------------------ imports
def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every in-tree module `path` imports, at the top or inside a function (a lazy import still closes a circle)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                mod = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                out |= {f"{mod}.{a.name}"} if f"{mod}.{a.name}" in mods else ({mod} if mod in mods else set())
    return out - {name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on_stack.add(root)  # noqa: E702
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on_stack.add(w)  # noqa: E702
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on_stack.discard(w); comp.append(w)  # noqa: E702
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_names_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_among_in_tree_modules():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    assert "core.ingest" in graph["core.daemon"]  # the walker sees real edges
    assert _cycles(graph) == [], "import circles: " + "; ".join(" <-> ".join(c) for c in _cycles(graph))


def _defined_names(path: Path) -> set[str] | None:
    """The names a module defines at its top level (None: it has a star import or a module __getattr__)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        for sub in ([node] if not isinstance(node, (ast.If, ast.Try)) else ast.walk(node)):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(sub.name)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                if any(a.name == "*" for a in sub.names):
                    return None
                names |= {(a.asname or a.name).split(".")[0] for a in sub.names}
            elif isinstance(sub, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in (sub.targets if isinstance(sub, ast.Assign) else [sub.target]):
                    names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return None if "__getattr__" in names else names


def test_every_in_tree_import_resolves():
    """`from core.x import y` anywhere in the tree, also inside a function and in benchmarks/ and tests/, names a
    module that exists and a name it defines: a moved module breaks this test, not a benchmark run an hour in."""
    mods = _modules()
    scanned = dict(mods)
    for folder in ("benchmarks", "tests", "scripts"):
        for f in (REPO / folder).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            scanned[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    roots = set(PACKAGES) | {"benchmarks", "tests", "scripts"}
    broken = []
    for name, path in scanned.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module and node.module.split(".")[0] in roots:
                target = mods.get(node.module) or scanned.get(node.module)
                if target is None and (REPO / node.module.replace(".", "/")).is_dir():  # a namespace package (scripts/)
                    broken += [f"{path.relative_to(REPO)}:{node.lineno}: no module {node.module}.{a.name}"
                               for a in node.names if f"{node.module}.{a.name}" not in scanned]
                    continue
                if target is None:
                    broken.append(f"{path.relative_to(REPO)}:{node.lineno}: no module {node.module}")
                    continue
                defined = _defined_names(target)
                for a in node.names:
                    if defined is not None and a.name not in defined and f"{node.module}.{a.name}" not in scanned:
                        broken.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module} has no {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in roots and a.name not in scanned:
                        broken.append(f"{path.relative_to(REPO)}:{node.lineno}: no module {a.name}")
    assert broken == [], "\n".join(broken)


def _benchmark_shim(rel: str, node: ast.AST, source: str) -> bool:
    """A benchmark script's one documented line: `python benchmarks/NAME.py` puts the repo root, not benchmarks/,
    in sys.path[0] (an assignment, not an insertion), like the seed shims."""
    line = source.splitlines()[node.lineno - 1]
    return rel.startswith("benchmarks/") and line.startswith(
        "import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/")


def test_no_sys_path_edit_outside_the_seed_shims():
    offenders = []
    for f in sorted(REPO.glob("*/**/*.py")):
        rel = f.relative_to(REPO).as_posix()
        if rel.startswith((".venv", "node_modules")) or rel in SHIMS:
            continue
        source = f.read_text()
        for node in ast.walk(ast.parse(source, rel)):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else \
                node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if isinstance(target, ast.Subscript):
                target = target.value
            if isinstance(target, ast.Attribute) and ast.unparse(target) == "sys.path" \
                    and not _benchmark_shim(rel, node, source):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], f"sys.path edited outside the seed shims: {offenders}"


def test_the_seed_shims_are_two_lines_of_code():
    for rel in SHIMS:
        body = ast.parse((REPO / rel).read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert len({n.lineno for n in code}) == 2, rel


def test_library_modules_are_not_scripts():
    """Only the process entry modules keep a __main__ block: the CLIs live in core/cli."""
    allowed = {"trainer/child.py"}  # the daemon (and accelerate launch) start the child as python -m trainer.child
    scripts = []
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            rel = f.relative_to(REPO).as_posix()
            if f.name != "__main__.py" and rel not in allowed and rel not in SHIMS and "__main__" in f.read_text() \
                    and 'if __name__ == "__main__"' in f.read_text():
                scripts.append(rel)
    assert scripts == []


# ------------------------------------------------------------------ extras and broken imports
def test_a_missing_extra_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the package were not installed
    with pytest.raises(MissingExtra, match=r"gguf is not installed \(needed for a GGUF export\): "
                                           r"pip install -e '\.\[export\]'"):
        require("gguf", why="a GGUF export")
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingExtra, match=r"pip install -e '\.\[lora\]'"):
        require("peft")


def test_a_broken_dependency_inside_an_installed_extra_is_not_renamed(monkeypatch, tmp_path):
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "__init__.py").write_text("import cadence_missing_inner_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "peft", raising=False)
    with pytest.raises(ModuleNotFoundError) as info:
        require("peft")
    assert not isinstance(info.value, MissingExtra) and info.value.name == "cadence_missing_inner_dependency"


def test_export_of_a_gguf_without_gguf_says_which_extra(tmp_path):
    code = "import sys; sys.modules['gguf'] = None\nfrom management.export import write_gguf\nwrite_gguf(None, None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "MissingExtra: gguf is not installed" in out.stderr \
        and "pip install -e '.[export]'" in out.stderr, out.stderr[-2000:]


def test_a_broken_in_tree_import_crashes_the_daemon_start(tmp_path):
    """core.ingest raising ImportError must stop the daemon loudly, not leave it running without an inbox watcher."""
    conf = _base(tmp_path)
    broken = tmp_path / "broken"
    (broken / "core").mkdir(parents=True)
    # a sitecustomize that makes `import core.ingest` fail the way a real bug in it would
    (broken / "sitecustomize.py").write_text(
        "import sys, importlib.abc\n"
        "class Broken(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'core.ingest':\n"
        "            raise ImportError('cannot import name Ready from core.watcher (injected)')\n"
        "sys.meta_path.insert(0, Broken())\n")
    env = _env(PYTHONPATH=f"{broken}:{REPO}")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "core.cli", "daemon", "--config", str(conf)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "injected" in out.stderr and "ImportError" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "base" / ".pids" / "daemon.pid").exists()
    print(f"daemon refused to start in {time.monotonic() - started:.1f}s")
