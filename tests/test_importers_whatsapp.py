"""WhatsApp importer: every tricky line kind, with the exact turns it must produce."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_manager.importers.common import ImportFailed, row_problems
from data_manager.importers.whatsapp import import_whatsapp

FIXTURES = Path(__file__).parent / "fixtures" / "whatsapp"
REPO = Path(__file__).resolve().parent.parent
LRM, NNBSP = "\u200e", "\u202f"


def turns(rows):
    return [[(m["role"], m["content"]) for m in r["messages"]] for r in rows]


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_android_12h_month_first(tmp_path):
    res = import_whatsapp(FIXTURES / "android_12h_mdy.txt", "Alice")
    assert turns(res.rows) == [
        [("user", "Hey Alice, are you coming tonight?\nIt starts at ten"),
         ("assistant", "Yes!\nI will bring the cake.\nIt is chocolate this time.\n\nPromise."),
         ("user", "Great, see for directions"),  # URL removed, the rest of the message kept
         ("assistant", "Got it, thanks"),
         ("user", "Happy new year almost!"),
         ("assistant", "Happy new year Bob")],
        # 12 h of silence: a new conversation; Alice's opener has nothing to reply to, Bob's last line no reply
        [("user", "Ha, me too"), ("assistant", "Coffee later?")],
    ]
    assert res.stats["day_first"] is False
    assert res.stats["dropped"] == {"system": 1, "deleted": 2, "media_or_url_only": 3}
    assert res.rows[0]["metadata"]["started_at"] == "2023-12-31T21:01:00"
    assert res.rows[1]["metadata"]["started_at"] == "2024-01-01T12:30:00"  # 12:30 PM is noon, 12:00 AM midnight
    assert all(row_problems(r) == [] for r in res.rows)


def test_silence_hours_configurable():
    # 2 h: 9:10 PM -> 11:59 PM also splits; the first part ends with Alice, the second is Bob -> Alice
    res = import_whatsapp(FIXTURES / "android_12h_mdy.txt", "alice", silence_hours=2)
    assert [t[-1] for t in turns(res.rows)] == [("assistant", "Got it, thanks"), ("assistant", "Happy new year Bob"),
                                                ("assistant", "Coffee later?")]
    assert turns(res.rows)[1] == [("user", "Happy new year almost!"), ("assistant", "Happy new year Bob")]


def ios_group_lines():
    return [
        f"[31.12.23, 21:40:00] Family: {LRM}Messages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, can read or listen to them.",
        f"[31.12.23, 21:40:01] Family: {LRM}Alice created group \u201cFamily\u201d",
        f"[31.12.23, 21:40:02] Family: {LRM}Alice added Bob and Carol",
        f"{LRM}[31.12.23, 21:40:03] Family: {LRM}Carol reset this group's invite link",  # unknown phrase: pseudo-sender rule
        f"{LRM}[31.12.23, 21:41:05] Bob: Who is cooking?",
        f"[31.12.23, 21:41:30] ~{NNBSP}Carol: Not me",
        f"{LRM}[31.12.23, 21:42:00] Carol: {LRM}image omitted",
        "[31.12.23, 21:43:10] Alice: I am.",
        "Pasta again",
        f"[31.12.23, 21:44:00] Alice: {LRM}<attached: 00000012-PHOTO-2023-12-31-21-44-00.jpg>",
        f"[31.12.23, 21:45:00] Bob: Yum {LRM}<This message was edited>",
        f"[31.12.23, 21:46:00] Alice: {LRM}This message was deleted.",
        "[31.12.23, 21:47:00] Alice: Dinner at 8",
        f"[31.12.23, 21:48:00] Bob: {LRM}Missed voice call",
        f"[01.01.24, 09:00:00] Carol: {LRM}Carol left",
        "[01.01.24, 09:05:00] Bob: Morning",
        "[01.01.24, 09:06:00] Alice: Morning Bob",
    ]


def test_ios_group_all_others_are_user_with_names(tmp_path):
    res = import_whatsapp(write(tmp_path, "family.txt", ios_group_lines()), "Alice")
    assert turns(res.rows) == [
        [("user", "Bob: Who is cooking?\nCarol: Not me"), ("assistant", "I am.\nPasta again"),
         ("user", "Bob: Yum"), ("assistant", "Dinner at 8")],
        [("user", "Bob: Morning"), ("assistant", "Morning Bob")],
    ]
    assert res.stats["day_first"] is True and res.stats["group"] is True
    assert set(res.stats["senders"]) == {"Alice", "Bob", "Carol"}  # "~ Carol" is Carol; "Family" is no speaker
    assert res.stats["dropped"] == {"system": 6, "deleted": 1, "media_or_url_only": 2}


def test_ios_group_named_partner_only(tmp_path):
    res = import_whatsapp(write(tmp_path, "family.txt", ios_group_lines()), "Alice", partner="bob")
    assert turns(res.rows) == [
        [("user", "Who is cooking?"), ("assistant", "I am.\nPasta again"), ("user", "Yum"), ("assistant", "Dinner at 8")],
        [("user", "Morning"), ("assistant", "Morning Bob")],
    ]
    assert res.stats["dropped"]["other_participant"] == 1


def test_ios_12h_narrow_space_ambiguous_dates(tmp_path):
    lines = [f"[1/2/24, 9:41:05{NNBSP}PM] Bob: Hi{NNBSP}there",
             f"[1/2/24, 9:41:30{NNBSP}PM] Alice: Hello!",
             f"[1/2/24, 11:59:59{NNBSP}PM] Bob: Still up?",
             f"[1/3/24, 12:00:10{NNBSP}AM] Alice: Always"]
    p = write(tmp_path, "ios12.txt", lines)
    res = import_whatsapp(p, "Alice")  # no field > 12: a 12 h clock means month-first
    assert turns(res.rows) == [[("user", "Hi there"), ("assistant", "Hello!"), ("user", "Still up?"), ("assistant", "Always")]]
    assert res.rows[0]["metadata"]["started_at"] == "2024-01-02T21:41:05"
    res = import_whatsapp(p, "Alice", date_order="dmy")
    assert res.rows[0]["metadata"]["started_at"] == "2024-02-01T21:41:05"
    # day-first: 1 Feb 23:59:59 -> 1 Mar 00:00:10 is a month of silence: Bob's question goes unanswered,
    # and Alice's "Always" opens a conversation with nothing to reply to
    assert turns(res.rows) == [[("user", "Hi there"), ("assistant", "Hello!")]]


def test_android_24h_day_first_system_lines_and_colons(tmp_path):
    lines = ["13.01.24, 08:00 - Alice added Bob",
             "13.01.24, 08:01 - Bob: Time: 10pm? Place: mine",
             "13.01.24, 08:02 - Alice: Works: see you",
             "13.01.24, 08:03 - Bob left",
             '13.01.24, 08:03 - Alice changed the subject from "plans" to "plans: friday"',
             "13.01.24, 08:04 - Alice: Contact card omitted",
             "13.01.24, 08:05 - Bob: location: https://maps.google.com/?q=1,2",
             "13.01.24, 08:06 - Bob: www.example.org",
             "13.01.24, 08:07 - Bob: ok"]
    res = import_whatsapp(write(tmp_path, "a24.txt", lines), "Alice")
    assert turns(res.rows) == [[("user", "Time: 10pm? Place: mine"), ("assistant", "Works: see you")]]
    assert res.rows[0]["metadata"]["started_at"] == "2024-01-13T08:01:00"
    assert res.stats["dropped"] == {"system": 3, "media_or_url_only": 3}


def test_iso_dates_dash_seconds_and_max_pairs(tmp_path):
    lines = []
    for i in range(5):
        lines += [f"2024-03-0{i + 1}, 10:00:00 - Bob: q{i}", f"2024-03-0{i + 1}, 10:00:30 - Alice: a{i}"]
    res = import_whatsapp(write(tmp_path, "iso.txt", lines), "Alice", silence_hours=48, max_pairs=2)
    assert turns(res.rows) == [[("user", "q0"), ("assistant", "a0"), ("user", "q1"), ("assistant", "a1")],
                               [("user", "q2"), ("assistant", "a2"), ("user", "q3"), ("assistant", "a3")],
                               [("user", "q4"), ("assistant", "a4")]]
    res = import_whatsapp(write(tmp_path, "iso.txt", lines), "Alice", silence_hours=1, system_prompt="You are Alice.")
    assert len(res.rows) == 5 and res.rows[0]["messages"][0] == {"role": "system", "content": "You are Alice."}


def test_errors_name_file_line_and_rule(tmp_path):
    mixed = write(tmp_path, "mixed.txt", ["13/01/24, 08:00 - Bob: hi", "01/13/24, 08:01 - Alice: yo"])
    with pytest.raises(ImportFailed) as exc:
        import_whatsapp(mixed, "Alice")
    assert f"{mixed}:2: whatsapp_dates" in str(exc.value)
    with pytest.raises(ImportFailed, match=r"mdy, but this date's first field is > 12"):
        import_whatsapp(write(tmp_path, "d.txt", ["13/01/24, 08:00 - Bob: hi"]), "Bob", date_order="mdy")
    with pytest.raises(ImportFailed, match=r"no WhatsApp message lines"):
        import_whatsapp(write(tmp_path, "notes.txt", ["just some notes", "no chat here"]), "Alice")
    with pytest.raises(ImportFailed, match=r"--me 'Zed' never writes in this chat; senders: 'Bob' \(6\), 'Alice' \(6\)"):
        import_whatsapp(FIXTURES / "android_12h_mdy.txt", "Zed")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("12/31/23, 9:01 PM - Bob: hi\n12/31/23, 9:02 PM - Alice: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ImportFailed, match=r"latin1.txt:2: encoding: not UTF-8"):
        import_whatsapp(bad, "Alice")


def test_cli_out_and_inbox(tmp_path, make_config):
    cfg = make_config({"daemon.settle_seconds": 0, "daemon.inbox_observer": "polling"})
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps({"paths": {"base_dir": str(cfg.layout.base_dir)}}))
    out = tmp_path / "alice.jsonl"
    cmd = [sys.executable, "-m", "core.cli", "import", "whatsapp", str(FIXTURES / "android_12h_mdy.txt"), "--me", "Alice"]
    r = subprocess.run(cmd + ["--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 2
    r = subprocess.run(cmd + ["--inbox", "--config", str(cfg_path), "--priority", "high"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    inbox = cfg.layout.inbox
    assert sorted(p.name for p in inbox.iterdir()) == ["whatsapp_android_12h_mdy.job.json", "whatsapp_android_12h_mdy.jsonl"]
    job = json.loads((inbox / "whatsapp_android_12h_mdy.job.json").read_text())
    assert job["schema_id"] == "chat_sft_v1" and job["priority"] == "high"
    from core.ingest import Ingestor
    results = Ingestor(cfg).scan_once()  # the daemon's own intake takes it, sidecar and all
    assert [(r.outcome, r.state) for r in results] == [("queued", "high")], [r.to_dict() for r in results]
    r = subprocess.run(cmd[:-2] + ["--me", "Nobody", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "never writes in this chat" in r.stderr and "Traceback" not in r.stderr
