"""Generic importer: CSV / TSV / JSON / JSONL shapes, role mapping, and errors naming file, line and problem."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_manager.importers.common import ImportFailed, row_problems
from data_manager.importers.generic import import_generic

REPO = Path(__file__).resolve().parent.parent


def msgs(rows):
    return [[(m["role"], m["content"]) for m in r["messages"]] for r in rows]


def test_csv_prompt_response_multiline_and_system(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text('\ufeffPrompt , Response,System\n'
                 '"What is 2+2?","4",\n'
                 '"Write a haiku","line one\nline two, with comma\nline three",Be poetic.\n'
                 'Numbers,42,\n', encoding="utf-8")
    res = import_generic(p)
    assert msgs(res.rows) == [
        [("user", "What is 2+2?"), ("assistant", "4")],
        [("system", "Be poetic."), ("user", "Write a haiku"), ("assistant", "line one\nline two, with comma\nline three")],
        [("user", "Numbers"), ("assistant", "42")],
    ]
    assert res.stats["shapes"] == {"prompt": 3}


def test_tsv_question_answer_and_alpaca_json(tmp_path):
    p = tmp_path / "qa.tsv"
    p.write_text("question\tanswer\nCapital of France?\tParis\n", encoding="utf-8")
    assert msgs(import_generic(p).rows) == [[("user", "Capital of France?"), ("assistant", "Paris")]]
    a = tmp_path / "alpaca.json"
    a.write_text(json.dumps([
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]))
    assert msgs(import_generic(a).rows) == [[("user", "Translate to French\n\ncat"), ("assistant", "chat")],
                                            [("user", "Say hi"), ("assistant", "hi")]]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 2, "data": [{"prompt": "p", "completion": "c", "id": 7}]}))
    assert import_generic(wrapped).rows == [{"messages": [{"role": "user", "content": "p"},
                                                          {"role": "assistant", "content": "c"}], "id": 7}]


def test_jsonl_hf_messages_and_sharegpt(tmp_path):
    p = tmp_path / "mixed.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "S"}, {"role": "User", "content": "hi"},
                      {"role": "assistant", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}]},
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                           {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}, {"from": "human", "value": "unanswered"}]},
        {"conversations": [{"from": "system", "value": "sys"}, {"from": "user", "value": "x"}, {"from": "bot", "value": "y"}]},
        {"messages": [{"role": "prompter", "content": "q"}, {"role": "model", "content": "r"}]},
    ]
    p.write_text("".join(json.dumps(r) + "\n\n" for r in rows))
    res = import_generic(p)
    assert msgs(res.rows) == [
        [("system", "S"), ("user", "hi"), ("assistant", "hello")],
        [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")],
        [("system", "sys"), ("user", "x"), ("assistant", "y")],
        [("user", "q"), ("assistant", "r")],
    ]
    assert res.stats["trimmed_trailing_user_turns"] == 1
    assert res.stats["shapes"] == {"messages": 2, "conversations": 2}
    assert all(row_problems(r) == [] for r in res.rows)


def test_errors_name_file_line_and_problem(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join([
        json.dumps({"prompt": "ok", "response": "fine"}),
        '{"prompt": "broken"',
        json.dumps({"text": "no known columns"}),
        json.dumps({"prompt": "q", "response": "   "}),
        json.dumps({"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "then"},
                                 {"role": "assistant", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                                 {"role": "assistant", "content": "y"}]}),
        json.dumps(["not", "an", "object"]),
    ]) + "\n")
    with pytest.raises(ImportFailed) as exc:
        import_generic(p)
    got = [(q.line, q.message) for q in exc.value.problems]
    assert [line for line, _ in got] == [2, 3, 4, 5, 6, 7, 8]
    text = str(exc.value)
    for needle in (f"{p}:2: import_record: invalid JSON", f"{p}:3: import_record: no known columns",
                   "found: text", f"{p}:4: import_record: 'response' is empty", "unknown role 'narrator'",
                   "messages[0] is 'assistant', expected 'user'", "content parts of type ['image_url']",
                   "a record must be an object, got list"):
        assert needle in text, needle
    res = import_generic(p, skip_bad=True)
    assert msgs(res.rows) == [[("user", "ok"), ("assistant", "fine")]]
    assert res.stats["skipped"] == 7 and len(res.problems) == 7

    c = tmp_path / "bad.csv"
    c.write_text("prompt,response\nq1,a1\nq2,a2,extra\nq3\n", encoding="utf-8")
    with pytest.raises(ImportFailed) as exc:
        import_generic(c)
    assert [(q.line, q.message.split(" ")[0]) for q in exc.value.problems] == [(3, "1"), (4, "fewer")]
    j = tmp_path / "broken.json"
    j.write_text('[{"prompt": "a",\n "response": }]')
    with pytest.raises(ImportFailed, match=r"broken.json:2: json: invalid JSON"):
        import_generic(j)
    with pytest.raises(ImportFailed, match=r"cannot tell the format"):
        import_generic(tmp_path / "data.parquet")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,response\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(ImportFailed, match=r"latin.csv:2: encoding: not UTF-8"):
        import_generic(latin)


def test_cli(tmp_path):
    src = tmp_path / "pairs.csv"
    src.write_text("instruction,input,output\nAdd,1 2,3\n")
    out = tmp_path / "out" / "pairs.jsonl"
    cmd = [sys.executable, "-m", "core.cli", "import", "generic", str(src), "--out", str(out)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"messages": [{"role": "user", "content": "Add\n\n1 2"}, {"role": "assistant", "content": "3"}]}]
    src.write_text("a,b\n1,2\n")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"{src}:2: import_record: no known columns" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "core.cli", "import", "generic", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--inbox" in r.stdout
