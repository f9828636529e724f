"""The documentation stays true to the code: generated pages current, links resolving, the README short.

- every generated part of docs/ (scripts/gen_docs.py) equals what the code gives today; a failure names the
  command that regenerates it;
- README.md is under 200 lines;
- every relative link in README.md and docs/*.md points to an existing file, and its #anchor to a heading there;
- docs/monitor.md names every route of the monitor app;
- benchmarks/report.py writes a table with its provenance between its markers and leaves the rest of the page;
  docs/benchmarks.md holds the markers of every benchmark wired to it.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.report import BenchmarkRun, begin_marker, end_marker, replace_section
from scripts import gen_docs

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
WIRED_BENCHMARKS = ("curriculum", "deploy", "ingest", "monitor", "restart", "serve", "vllm_reload")

LINK = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


# --------------------------------------------------------------------------------------------- generated
@pytest.mark.parametrize("part", [p.name for p in gen_docs.PARTS])
def test_generated_part_is_current(part):
    problems = gen_docs.stale([part])
    assert not problems, "\n".join(problems)


def test_check_names_the_command_when_a_page_drifted(tmp_path):
    page = "docs/configuration.md"
    (tmp_path / "docs").mkdir()
    text = (REPO / page).read_text(encoding="utf-8")
    assert "| `training.learning_rate` |" in text
    (tmp_path / page).write_text(text.replace("Peak learning rate (AdamW).", "Peak learning rate."), encoding="utf-8")
    [problem] = gen_docs.stale(["configuration"], root=tmp_path)
    assert page in problem and "python3 -m scripts.gen_docs --write --only configuration" in problem
    assert gen_docs.write(["configuration"], root=tmp_path) == [page]
    assert (tmp_path / page).read_text(encoding="utf-8") == text
    assert gen_docs.stale(["configuration"], root=tmp_path) == []


def test_check_command_exits_0_when_current():
    # the CLI on the torch-free part (the parametrized test above covers every part)
    done = subprocess.run([sys.executable, "-m", "scripts.gen_docs", "--check", "--only", "configuration"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout


def test_region_markers_are_required_once():
    begin, end = gen_docs.begin_marker("x"), gen_docs.end_marker("x")
    assert gen_docs.replace_region(f"a\n{begin}\nold\n{end}\nb", "x", "new") == f"a\n{begin}\nnew\n{end}\nb"
    for broken in ("no markers", f"{begin}\n{begin}\n{end}", f"{end}\n{begin}"):
        with pytest.raises(gen_docs.DocsError, match="'x'"):
            gen_docs.replace_region(broken, "x", "new")


def test_configuration_page_lists_every_key_with_default_and_critical_marker():
    from core.config import CRITICAL_KEYS, CadenceConfig

    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")

    def keys(cls, prefix=""):
        for name, field in cls.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from keys(field.annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    for key in keys(CadenceConfig):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"{key} missing from docs/configuration.md"
        assert ("**critical**" in row) == (key in CRITICAL_KEYS), row


class _Inner(BaseModel):
    """Inner record."""

    when: float = Field(..., description="Seconds since the epoch.")


class _Record(BaseModel):
    """A record for the renderer.

    Second paragraph, not shown."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="What it is called.")
    count: int = Field(0, ge=0, description="How many.")
    inner: list[_Inner] | None = Field(None, description="Nested ones.")


def test_shared_files_renders_each_record_and_the_models_it_holds():
    text = gen_docs.render_shared_files([("Sample record", _Record, "`status/sample.json`")])
    assert "### Sample record" in text and "Where: `status/sample.json`" in text
    assert "unknown keys are an error" in text and "A record for the renderer." in text
    assert "Second paragraph" not in text
    assert "| `name` | `str` | required | What it is called. |" in text
    assert "| `count` | `int` (≥ 0) | `0` | How many. |" in text
    assert "| `inner` | `list[_Inner] \\| None` | `null` | Nested ones. |" in text
    assert "`_Inner`:" in text and "| `when` | `float` | required | Seconds since the epoch. |" in text
    assert "No record models" in gen_docs.render_shared_files([])


def test_shared_files_include_every_state_package_file(monkeypatch):
    from core.state import registry
    from core.state.base import StateFile, StateRecord

    class Beat(StateRecord):
        """One heartbeat."""

        step: int = Field(0, description="Global step.")

    sample = StateFile(pattern="status/beat.json", model=Beat, writers=("trainer/child.py",),
                       readers=("core/daemon.py",), description="Heartbeat")
    monkeypatch.setattr(registry, "all_files", lambda: [sample])
    records = gen_docs.shared_files()
    assert records[-1] == ("Heartbeat", Beat, "`status/beat.json`, one record per file; written by "
                                              "`trainer/child.py`; read by `core/daemon.py`")
    text = gen_docs.render_shared_files(records)
    assert "### Heartbeat" in text and "| `step` | `int` | `0` | Global step. |" in text
    assert "| `schema_version` | `int` | `1` |" in text


class _Priority(BaseModel):
    level: str = Field("normal", description="high, normal or low.")


class _Body(BaseModel):
    """What the route takes."""

    reason: str = Field(..., description="Why.")
    priority: _Priority | None = None


def test_http_api_renders_guards_prefixes_and_request_body_models():
    from fastapi import APIRouter, Depends, FastAPI

    async def require_token():
        pass

    async def require_api_key():
        pass

    router = APIRouter()

    @router.post("/queue/{name}/retry", status_code=202)
    async def retry(name: str, body: _Body):
        return {}

    @router.get("/open", dependencies=[Depends(require_api_key)])
    async def open_route(limit: int = 100):
        return {}

    @router.post("/control", openapi_extra={"requestBody": {"content": {"application/json": {
        "schema": _Body.model_json_schema()}}}})
    async def control():  # a body read by the handler itself, declared for the schema (core/http_json.JsonBody)
        return {}

    app = FastAPI()
    app.include_router(router, prefix="/api", dependencies=[Depends(require_token)])
    text = gen_docs.render_app(app, "Sample")
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| POST") or line.startswith("| GET")}
    assert "admin token" in rows["`/api/queue/{name}/retry`"] and "| 202 |" in rows["`/api/queue/{name}/retry`"]
    assert "application/json: `_Body`" in rows["`/api/queue/{name}/retry`"]
    assert "`name` (path, string, required)" in rows["`/api/queue/{name}/retry`"]
    assert "admin token, API key (when `inference.api_keys` is set)" in rows["`/api/open`"]
    assert "`limit` (query, integer, default `100`)" in rows["`/api/open`"]
    assert "#### `_Body`" in text and "| `reason` | `string` | yes |  | Why. |" in text
    assert "#### `_Priority`" in text and '| `level` | `string` |  | `"normal"` | high, normal or low. |' in text
    assert "application/json: `_Body`" in rows["`/api/control`"] and text.count("#### `_Body`") == 1


def _named(name):
    def fn():
        pass
    fn.__name__ = name
    return fn


def test_http_api_guards_are_named_or_refused():
    assert gen_docs._guards("/x", [_named("require_admin"), _named("other"), _named("require_token")]) == ["admin token"]
    with pytest.raises(gen_docs.DocsError, match="require_magic"):
        gen_docs._guards("/x", [_named("require_magic")])


# --------------------------------------------------------------------------------------------- README, links
def test_readme_is_under_200_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < 200, f"README.md has {lines} lines; move reference material into docs/"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, "\n".join(broken)


def test_links_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top part\n\n[a](#top-part) [b](#nowhere)\n", encoding="utf-8")
    assert anchors(page) == {"top-part"}
    assert LINK.findall(page.read_text()) == ["#top-part", "#nowhere"]
    assert slug("Inference server (`python -m inference`, 127.0.0.1:8765)") == \
        "inference-server-python--m-inference-1270018765"


def test_monitor_page_names_every_route(tmp_path):
    from core.config import from_dict
    from monitoring.app import create_app

    spec = create_app(from_dict({"paths": {"base_dir": str(tmp_path)}}, tmp_path), start_feed=False).openapi()
    text = (REPO / "docs" / "monitor.md").read_text(encoding="utf-8")
    missing = [f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops if f"{m.upper()} {p}" not in text]
    assert not missing, f"docs/monitor.md does not describe: {', '.join(missing)}"


# --------------------------------------------------------------------------------------------- benchmarks
def test_benchmarks_page_has_a_region_for_every_benchmark():
    text = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    for name in (*WIRED_BENCHMARKS, "serve_front_overhead", "curriculum_paired", "curriculum_margin", "train_throughput"):
        assert text.count(begin_marker(name)) == 1 and text.count(end_marker(name)) == 1, name
        assert text.index(begin_marker(name)) < text.index(end_marker(name)), name
    for name in WIRED_BENCHMARKS:
        assert "--write-docs" in (REPO / "benchmarks" / f"{name}.py").read_text(encoding="utf-8"), name
    assert 'section="serve_front_overhead"' in (REPO / "benchmarks" / "serve.py").read_text(encoding="utf-8")


def test_report_writes_the_table_with_provenance_and_keeps_the_rest(tmp_path):
    page = tmp_path / "benchmarks.md"
    before = f"# Benchmarks\n\nintro\n\n{begin_marker('ingest')}\nold table\n{end_marker('ingest')}\n\nearlier run: 0.12 s\n"
    page.write_text(before, encoding="utf-8")
    run = BenchmarkRun.start("ingest", argv=[str(REPO / "benchmarks" / "ingest.py"), "--lines", "10", "--write-docs"])
    run.write_docs("Ingest", ["what", "Cadence", "baseline"], [["QUICK", "12.0 MB/s", "30.0 MB/s | json"]],
                   ["a note"], page=page)
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nintro\n\n") and text.endswith("\n\nearlier run: 0.12 s\n")
    assert "old table" not in text
    region = text.split(begin_marker("ingest"))[1].split(end_marker("ingest"))[0]
    assert "| QUICK | 12.0 MB/s | 30.0 MB/s \\| json |" in region and "a note" in region
    assert "- command: `python benchmarks/ingest.py --lines 10 --write-docs`" in region
    assert re.search(r"- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", region)
    assert re.search(r"- host: .+, \d+ cores", region)
    assert re.search(r"- load average \(1 / 5 / 15 min\): [\d.]+ / [\d.]+ / [\d.]+ before, [\d.]+ / [\d.]+ / [\d.]+ after",
                     region)
    assert re.search(r"- commit: [0-9a-f]{40}", region)

    # a second run replaces its own region only; another script's region is added at the end
    run.write_docs("Ingest", ["what"], [["again"]], page=page)
    BenchmarkRun.start("serve", argv=["benchmarks/serve.py"]).write_docs("Serving", ["what"], [["x"]], page=page)
    text = page.read_text(encoding="utf-8")
    assert text.count(begin_marker("ingest")) == 1 and "| again |" in text and "| QUICK |" not in text
    assert "earlier run: 0.12 s" in text
    assert text.index("earlier run") < text.index(begin_marker("serve"))
    assert "## `benchmarks/serve.py`" in text


def test_report_refuses_broken_markers():
    with pytest.raises(ValueError, match="'ingest'"):
        replace_section(f"{end_marker('ingest')}\n{begin_marker('ingest')}", "ingest", "x", "t")
    with pytest.raises(ValueError, match="'ingest'"):
        replace_section(f"{begin_marker('ingest')}\n{begin_marker('ingest')}\n{end_marker('ingest')}", "ingest", "x", "t")
