"""Dataset tools (validate / fix / dedupe / stats) on the ingest bad-input corpus and on clean data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.validation.validator import DataValidator
from data_manager.dataset_tools import dedupe_file, file_stats, fix_file, validate_file
import ingest_corpus as corpus

REPO = Path(__file__).resolve().parent.parent
# Kinds whose content a fix cannot touch: not a data file at all, or only the name / sidecar / queue is wrong.
NOT_CONTENT = {"not_regular_file", "unsafe_name", "unsupported_extension", "orphan_sidecar", "job_sidecar",
               "unknown_schema", "duplicate"}
LENGTH_RULES = {"zero_supervised", "reply_too_long", "too_long_p95"}  # STANDARD: fix does not shorten text
FIXED_NOT_DROPPED = {"bom", "utf16", "utf16_no_bom", "utf32", "assistant_first", "ends_with_user", "content_parts_list",
                     "unknown_row_key", "control_chars", "lone_surrogate", "truncated_last_line", "invalid_json",
                     "invalid_utf8", "non_string_content", "not_object", "huge_30mb_line"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    inbox = tmp_path_factory.mktemp("corpus")
    made = {}
    for kind in corpus.BAD:
        made[kind.name] = inbox / kind.make(inbox)
    return made


@pytest.fixture
def cfg(make_config):
    return make_config()


def test_validate_reports_every_corpus_files_rule(cfg, corpus_dir):
    from core.ingest import Ingestor

    original = cfg.layout.base_dir / "src" / corpus.ORIGINAL[0]
    original.parent.mkdir(parents=True)
    original.write_text(corpus.ORIGINAL[1])
    assert Ingestor(cfg).ingest_path(original).accepted
    validator = DataValidator(cfg)
    for kind in corpus.BAD:
        rep = validate_file(corpus_dir[kind.name], cfg, validator=validator, check_queue=True)
        assert kind.rule in rep.rules("error"), (kind.name, rep.summary())
        assert not rep.ok
        if kind.line is not None:
            lines = [e["line"] for e in rep.problems[kind.rule].lines]
            assert kind.line in lines, (kind.name, lines)
    good = cfg.layout.base_dir / "good.jsonl"
    good.write_text(corpus.good_lines(30, "ok"))
    rep = validate_file(good, cfg, validator=validator, level="deep")
    assert rep.ok and rep.level == "deep" and rep.stats["examples"] == 30 and rep.stats["length"]["max"] > 0


def test_fix_repairs_what_is_fixable_and_reports_each_change(cfg, corpus_dir, tmp_path):
    validator = DataValidator(cfg)
    for kind in corpus.BAD:
        if kind.rule in NOT_CONTENT:
            continue
        src = corpus_dir[kind.name]
        out = tmp_path / f"{kind.name}.fixed.jsonl"
        result = fix_file(src, out, cfg)
        if kind.name == "binary":
            assert result.fatal and "binary" in result.fatal and not out.exists()
            continue
        assert result.changes or kind.rule in LENGTH_RULES, kind.name
        for c in result.changes:
            assert c["action"] in ("fixed", "dropped", "removed") and c["message"], c
        if kind.line is not None and kind.rule not in LENGTH_RULES:
            assert kind.line in [c["line"] for c in result.changes], (kind.name, result.changes)
        if result.rows_out:
            schema = result.schema_id
            rep = validator.quick(out, schema)
            assert rep.ok, (kind.name, rep.summary())
            assert rep.stats["examples"] == result.rows_out
        else:
            assert not out.exists() and result.changes[-1]["message"] == "no valid rows left"
        if kind.name in FIXED_NOT_DROPPED:
            assert result.rows_out >= 1, (kind.name, result.changes)
    # exact reports for a few
    r = fix_file(corpus_dir["bom"], None, cfg)
    assert r.changes == [{"line": 1, "action": "fixed", "message": "removed the UTF-8 byte order mark"}]
    r = fix_file(corpus_dir["ends_with_user"], None, cfg)
    assert r.changes == [{"line": 1, "action": "fixed", "message": "removed a trailing user turn (no reply to learn from)"}]
    r = fix_file(corpus_dir["two_users"], None, cfg)
    assert r.changes[0]["action"] == "dropped" and "messages[1] is 'user', expected 'assistant'" in r.changes[0]["message"]
    r = fix_file(corpus_dir["syllo_missing_level"], None, cfg)
    assert r.schema_id == "syllo_v1" and "metadata.level: required key missing" in r.changes[0]["message"]


def test_fix_role_names_parts_keys_and_crlf(cfg, tmp_path):
    src = tmp_path / "messy.jsonl"
    rows = [
        {"messages": [{"role": "Human", "content": "hi"}, {"role": "bot", "content": "hello"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "source": "x"},
        {"messages": [{"role": "user", "content": "a"}, {"role": "model", "content": [{"type": "text", "text": "b"}]},
                      {"role": "User", "content": "dangling"}]},
        {"messages": [{"role": "assistant", "content": "orphan reply"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
    ]
    src.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in rows).encode())
    out = tmp_path / "clean.jsonl"
    res = fix_file(src, out, cfg)
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    ]
    assert [(c["line"], c["action"], c["message"]) for c in res.changes] == [
        (1, "fixed", "removed the UTF-8 byte order mark"),
        (None, "fixed", "converted CRLF line endings to LF"),
        (1, "fixed", "messages[0]: role 'Human' -> 'user'"),
        (1, "fixed", "messages[1]: role 'bot' -> 'assistant'"),
        (2, "fixed", "renamed 'conversations' to 'messages'"),
        (2, "fixed", "removed key 'source' (not part of chat_sft_v1)"),
        (2, "fixed", "messages[0]: renamed 'from' to 'role'"),
        (2, "fixed", "messages[0]: renamed 'value' to 'content'"),
        (2, "fixed", "messages[0]: role 'human' -> 'user'"),
        (2, "fixed", "messages[1]: renamed 'from' to 'role'"),
        (2, "fixed", "messages[1]: renamed 'value' to 'content'"),
        (2, "fixed", "messages[1]: role 'gpt' -> 'assistant'"),
        (3, "fixed", "messages[1]: role 'model' -> 'assistant'"),
        (3, "fixed", "messages[1]: joined 1 text part(s) into one string"),
        (3, "fixed", "messages[2]: role 'User' -> 'user'"),
        (3, "fixed", "removed a trailing user turn (no reply to learn from)"),
        (4, "fixed", "removed a leading assistant turn (nothing it replies to)"),
        (4, "dropped", "incomplete: no user/assistant pair left"),
        (5, "dropped", "messages[1] (assistant) is empty"),
    ]
    assert (res.rows_in, res.rows_out, res.dropped) == (5, 3, 2)


def test_dedupe_exact_and_normalised(tmp_path):
    src = tmp_path / "dups.jsonl"
    a = {"messages": [{"role": "user", "content": "Hello  there"}, {"role": "assistant", "content": "Hi!"}]}
    b = {"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi!"}], "id": 9}
    c = {"messages": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "Thing"}]}
    src.write_text("\n".join([json.dumps(a), json.dumps(c), json.dumps(a, indent=None, separators=(",", ":")),
                              "not json", json.dumps(b), ""]) + "\n")
    out = tmp_path / "d.jsonl"
    res = dedupe_file(src, out)
    assert res["removed"] == [{"line": 3, "duplicate_of": 1, "kind": "exact"},
                              {"line": 5, "duplicate_of": 1, "kind": "normalised"}]
    assert [x for x in out.read_text().splitlines()] == [json.dumps(a, ensure_ascii=False), json.dumps(c), "not json"]
    assert dedupe_file(src, None, normalise=False)["normalised_duplicates"] == 0


def test_stats_uses_the_models_tokenizer(cfg, tmp_path):
    from trainer.data import encode_examples, load_tokenizer

    src = tmp_path / "s.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is one plus one?"},
                          {"role": "assistant", "content": "Two."}]},
            {"messages": [{"role": "user", "content": "Say hello " * 20}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "again"}, {"role": "assistant", "content": "hello hello"}]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n{broken\n")
    s = file_stats(src, cfg)
    tok = load_tokenizer(cfg.resolve(cfg.model.base_model))
    enc = encode_examples(rows, tok, "chat_sft_v1", 10_000)
    lengths = sorted(e.n_tokens for e in enc)
    assert (s["valid_rows"], s["invalid_rows"], s["blank_lines"]) == (2, 1, 1)
    assert s["roles"] == {"system": 1, "user": 3, "assistant": 3} and s["turns"] == {"min": 3, "median": 3.5, "max": 4}
    assert s["length"]["min"] == lengths[0] and s["length"]["max"] == lengths[1]
    assert s["supervised_tokens"] == sum(e.n_supervised for e in enc)
    assert s["tokens"] == sum(lengths)


def test_cli(cfg, corpus_dir, tmp_path):
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps({"paths": {"base_dir": str(cfg.layout.base_dir)},
                                    "model": {"base_model": str(cfg.resolve(cfg.model.base_model)), "max_length": 256},
                                    "training": {"micro_batch_tokens": 512}}))
    run = lambda *a: subprocess.run([sys.executable, "-m", "core.cli", "dataset", *a, "--config", str(cfg_path)], cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
    r = run("validate", str(corpus_dir["two_users"]), str(corpus_dir["bom"]), "--json")
    assert r.returncode == 1, r.stderr
    reports = json.loads(r.stdout)
    assert [p["rule"] for p in reports[0]["problems"]] == ["role_order"] and reports[1]["problems"][0]["rule"] == "bom"
    out = tmp_path / "fixed.jsonl"
    r = run("fix", str(corpus_dir["assistant_first"]), "--out", str(out))
    assert r.returncode == 0 and "line 2: fixed: removed a leading assistant turn" in r.stdout
    r = run("validate", str(out), str(corpus_dir["recursion_bomb"]), "--quick")
    assert r.returncode == 1 and "fixed.jsonl: quick ok" in r.stdout and "json_too_deep" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr
    r = run("stats", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["valid_rows"] == 2
    r = run("dedupe", str(out), "--dry-run")
    assert r.returncode == 0 and "removed 1 exact" in r.stdout  # GOOD_ROW twice
    r = run("fix", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and "missing.jsonl" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "core.cli", "dataset", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "validate" in r.stdout and "dedupe" in r.stdout
