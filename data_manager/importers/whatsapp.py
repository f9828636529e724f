"""WhatsApp chat export (.txt) -> chat_sft_v1 conversations in one person's voice.

The person whose voice is learned (`me`) is chosen by name. Every other
participant's turn becomes `user`, and `me`'s reply to it `assistant`: real
conversational pairs. Consecutive messages by one sender are merged into one
turn (joined by newlines); multi-line messages are kept whole.

Read from the file, both export styles and their locales:
* Android: `12/31/23, 9:41 PM - Name: text`, `31.12.23, 21:41 - Name: text`
* iOS: `[31.12.23, 21:41:05] Name: text`, `[12/31/23, 9:41:05 PM] Name: text`,
  with the invisible U+200E / U+202F / U+00A0 characters iOS inserts;
* 12 h (AM/PM, a.m./p.m.) and 24 h clocks, seconds or none, `/ . -` date
  separators, 2- or 4-digit years, ISO year-first dates. Day-first vs
  month-first is decided by the file (a first field > 12 means day-first, a
  second field > 12 month-first); an ambiguous file uses `date_order`
  ("auto": month-first with a 12 h clock, day-first with a 24 h clock).

Dropped (and counted by reason): system lines (encryption notices, "X added
Y", "X left", group subject/icon changes, security-code changes, missed
calls: an Android line without "Name:", or an iOS line whose text begins with
U+200E and matches a system phrase, or any message of a pseudo-sender that
only ever posts such lines, i.e. the group name), media placeholders
("<Media omitted>", "image omitted", "<attached: ...>", "x.jpg (file
attached)", "location: ..."), deleted messages ("This message was deleted",
"You deleted this message"), the "<This message was edited>" marker and
URLs (removed from the text; a message left empty is dropped).

Conversations are split where nobody wrote for `silence_hours`; within one,
leading turns by `me` (nothing to reply to) and trailing turns by others (no
reply) are dropped, and long conversations are cut into examples of at most
`max_pairs` user/assistant pairs. Group chats: by default every other
participant maps to `user`, each message prefixed with "Name: " so the model
sees who said what; with `partner`, only that person's messages are kept as
`user` and everyone else's are dropped (1:1 chats never get prefixes).
Placeholders and system phrases are recognised in English only.

Run as:
    cadence import whatsapp CHAT.txt --me "Alice" --out alice.jsonl
    cadence import whatsapp CHAT.txt --me "Alice" --partner "Bob" --silence-hours 4 --inbox
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from data_manager.importers.common import (ImportFailed, ImportResult, Problem, row_problems)

logger = logging.getLogger(__name__)

LRM = "\u200e"
# Direction marks and isolates iOS and Android put around names and attachments.
_INVISIBLE = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACES = re.compile("[\u202f\u00a0\u2009]")
_DATE = r"(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4})"
_TIME = r"(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)(?:\s?(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?"
BRACKET_LINE = re.compile(rf"^\[{_DATE},?\s{_TIME}\]\s(?P<body>.*)$")
DASH_LINE = re.compile(rf"^{_DATE},?\s{_TIME}\s[-\u2013]\s(?P<body>.*)$")
_SENDER = re.compile(r"^(?P<name>[^:\n]{1,100}?):(?:\s|$)(?P<text>.*)$", re.S)

_URL = re.compile(r"(?:https?://|www\.)\S+", re.I)
_EDITED = re.compile(r"\s*<This message was edited>\s*$", re.I)
_ATTACHED = re.compile(r"<attached:[^>]*>", re.I)
_FILE_ATTACHED = re.compile(r"\S+\.\w{1,5} \(file attached\)", re.I)
_MEDIA_LINE = re.compile(
    r"^(?:<media omitted>|(?:image|video|audio|sticker|gif|document|contact card|video note|voice message) omitted"
    r"|.+ (?:document|file) omitted|location:.*|live location shared|null|view once (?:photo|video|message))$", re.I)
_DELETED = re.compile(r"^(?:this message was deleted|you deleted this message)\.?$", re.I)
# Unambiguous whoever sends them: nobody types these as a message.
_SYSTEM_ANY = re.compile(
    r"^(?:messages and calls are end-to-end encrypted|messages to this (?:group|chat) are now secured"
    r"|your security code with .+ changed|.+'s security code changed|missed (?:group )?(?:voice|video) call"
    r"|waiting for this message)", re.I)
# System phrases that could be a real sentence: only trusted on Android sender-less lines or U+200E-marked text.
_SYSTEM_MARKED = re.compile(
    r"(?: added | removed |^you added |^you removed | left$| joined using | joined$|created (?:the )?group"
    r"|changed the (?:subject|group name|group description)|changed this group's (?:icon|settings)"
    r"|deleted this group's icon|changed their phone number|changed to \+|you're now an admin|is no longer an admin"
    r"|pinned a message|turned (?:on|off) disappearing messages|uses a default timer|security code)", re.I)

# An Android notice holding a colon ('X changed the subject to "a: b"') parses as sender + text; no real name reads like this.
_SYSTEM_SENDER = re.compile(r"\s(?:changed|added|removed|created|joined|left|deleted|pinned|turned|reset)\s", re.I)


@dataclass
class Message:
    line: int
    when: datetime | None
    sender: str | None  # None: a sender-less system line
    text: str
    marked: bool  # the text began with U+200E (iOS: system notice or attachment)


def _clean(text: str) -> str:
    return _INVISIBLE.sub("", _SPACES.sub(" ", text))


def parse_lines(lines: list[str], file: str) -> tuple[list[tuple[Message, re.Match]], list[Problem]]:
    """Header lines start a message, any other line continues the one before (multi-line messages).
    Returns each message with its header match (dates are parsed once the whole file has been seen)."""
    messages: list[list] = []  # [line, match, sender, text, marked]
    problems: list[Problem] = []
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        head = _SPACES.sub(" ", line.lstrip(LRM + "\u200f\ufeff"))
        m = BRACKET_LINE.match(head) or DASH_LINE.match(head)
        if m is None:
            if messages:
                messages[-1][3] += "\n" + line
            elif line.strip():
                problems.append(Problem(file, lineno, "text before the first message line (not a WhatsApp export line)", "whatsapp_format"))
            continue
        body = m.group("body")
        s = _SENDER.match(body)
        if s is None:
            messages.append([lineno, m, None, body, False])
        else:
            text = s.group("text")
            messages.append([lineno, m, s.group("name"), text, text.lstrip(" ").startswith(LRM)])
    if not messages:
        problems.append(Problem(file, None, 'no WhatsApp message lines found (expected e.g. "[31.12.23, 21:41:05] Name: text" '
                                            'or "12/31/23, 9:41 PM - Name: text")', "whatsapp_format"))
        return [], problems
    return [(Message(ln, None, _clean(name).strip().lstrip("~").strip() if name is not None else None, text, marked), m)
            for ln, m, name, text, marked in messages], problems


def decide_day_first(matches: list[tuple[int, re.Match]], date_order: str, file: str) -> bool:
    """True when the file's dates are day-first. The file decides when it can; `date_order` otherwise."""
    day_first_line = month_first_line = None
    twelve_hour = False
    for lineno, m in matches:
        a, b, _c = re.split(r"[./-]", m.group("date"))
        twelve_hour = twelve_hour or bool(m.group("ampm"))
        if len(a) == 4:
            continue
        if int(a) > 12 and day_first_line is None:
            day_first_line = lineno
        if int(b) > 12 and month_first_line is None:
            month_first_line = lineno
    if day_first_line and month_first_line:
        raise ImportFailed([Problem(file, month_first_line, f"dates are day-first at line {day_first_line} but month-first here",
                                    "whatsapp_dates")])
    if date_order == "dmy" and month_first_line:
        raise ImportFailed([Problem(file, month_first_line, "--date-order dmy, but this date's second field is > 12", "whatsapp_dates")])
    if date_order == "mdy" and day_first_line:
        raise ImportFailed([Problem(file, day_first_line, "--date-order mdy, but this date's first field is > 12", "whatsapp_dates")])
    if day_first_line or month_first_line:
        return bool(day_first_line)
    if date_order == "auto":
        logger.info("%s: no date decides day/month order; assuming %s (12 h clock: month-first)", file,
                    "month-first" if twelve_hour else "day-first")
        return not twelve_hour
    return date_order == "dmy"


def parse_timestamp(m: re.Match, day_first: bool) -> datetime:
    fields = re.split(r"[./-]", m.group("date"))
    a, b, c = (int(x) for x in fields)
    if len(fields[0]) == 4:
        year, month, day = a, b, c
    else:
        day, month, year = (a, b, c) if day_first else (b, a, c)
        year += 2000 if year < 100 else 0
    parts = [int(x) for x in re.split(r"[:.]", m.group("time"))]
    hour, minute, second = parts[0], parts[1], parts[2] if len(parts) > 2 else 0
    ampm = (m.group("ampm") or "").lower()
    if ampm.startswith("p") and hour < 12:
        hour += 12
    elif ampm.startswith("a") and hour == 12:
        hour = 0
    return datetime(year, month, day, hour, minute, second)


def clean_text(text: str) -> str:
    """The message as the model should see it: placeholders, attachments, edit markers and URLs removed."""
    text = _clean(text)
    text = _EDITED.sub("", text)
    text = _ATTACHED.sub("", text)
    text = _FILE_ATTACHED.sub("", text)
    text = _URL.sub("", text)
    kept = []
    for line in text.split("\n"):
        line = re.sub(r"[ \t]{2,}", " ", line).rstrip()
        if _MEDIA_LINE.match(line.strip()):
            continue
        kept.append(line)
    return "\n".join(kept).strip()


def read_chat(path: str | Path) -> list[str]:
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFailed([Problem(str(path), line, f"not UTF-8 at byte {exc.start + 1}; export the chat again", "encoding")]) from None
    return text.split("\n")


def _match_name(wanted: str, senders: Counter, what: str, file: str) -> str:
    norm = {s.casefold(): s for s in senders}
    found = norm.get(_clean(wanted).strip().casefold())
    if found is None:
        listed = ", ".join(f"{s!r} ({n})" for s, n in senders.most_common())
        raise ImportFailed([Problem(file, None, f"{what} {wanted!r} never writes in this chat; senders: {listed}", "whatsapp_name")])
    return found


def import_whatsapp(path: str | Path, me: str, *, partner: str | None = None, silence_hours: float = 6.0,
                    date_order: str = "auto", max_pairs: int | None = 10, system_prompt: str | None = None) -> ImportResult:
    """chat_sft_v1 rows from one WhatsApp export; ImportFailed (file, line, rule) when it cannot be read."""
    file = str(path)
    if date_order not in ("auto", "dmy", "mdy"):
        raise ValueError(f"date_order must be auto, dmy or mdy, not {date_order!r}")
    lines = read_chat(path)
    parsed, problems = parse_lines(lines, file)
    if not parsed:
        raise ImportFailed(problems)
    day_first = decide_day_first([(msg.line, m) for msg, m in parsed], date_order, file)
    messages = []
    for msg, m in parsed:
        try:
            msg.when = parse_timestamp(m, day_first)
        except ValueError as exc:
            problems.append(Problem(file, msg.line, f"bad date/time {m.group('date')} {m.group('time')}: {exc}", "whatsapp_dates"))
            continue
        messages.append(msg)
    dropped: Counter = Counter()
    kept: list[Message] = []
    for msg in messages:
        plain = _EDITED.sub("", _clean(msg.text)).strip()
        if (msg.sender is None or _SYSTEM_SENDER.search(msg.sender) or _SYSTEM_ANY.match(plain)
                or (msg.marked and _SYSTEM_MARKED.search(plain))):
            dropped["system"] += 1
            continue
        if _DELETED.match(plain):
            dropped["deleted"] += 1
            continue
        text = clean_text(msg.text)
        if not text:
            dropped["media_or_url_only"] += 1
            continue
        kept.append(Message(msg.line, msg.when, msg.sender, text, msg.marked))
    # a pseudo-sender (the group's name on iOS) only ever posts U+200E-marked notices
    speakers = {m.sender for m in kept if not m.marked}
    pseudo = [m for m in kept if m.sender not in speakers]
    dropped["system"] += len(pseudo)
    kept = [m for m in kept if m.sender in speakers]
    senders = Counter(m.sender for m in kept)
    me = _match_name(me, senders, "--me", file)
    if partner is not None:
        partner = _match_name(partner, senders, "--partner", file)
        if partner == me:
            raise ImportFailed([Problem(file, None, "--partner is the same person as --me", "whatsapp_name")])
        dropped["other_participant"] += sum(1 for m in kept if m.sender not in (me, partner))
        kept = [m for m in kept if m.sender in (me, partner)]
    group = partner is None and len(senders) > 2
    segments = split_on_silence(kept, silence_hours)
    rows = []
    for seg in segments:
        turns = merge_turns(seg, me, prefix_names=group)
        for chunk in pairs_of(turns, max_pairs):
            messages_out = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + chunk
            row = {"messages": messages_out, "metadata": {"source": "whatsapp", "started_at": _iso(seg[0].when)}}
            bad = row_problems(row)
            if bad:  # cannot happen by construction; never write a row the daemon would reject
                problems.append(Problem(file, seg[0].line, "; ".join(bad), "schema"))
                continue
            rows.append(row)
    stats = {"lines": len(lines), "messages": len(messages), "kept_messages": len(kept), "dropped": dict(dropped),
             "conversations": len(segments), "examples": len(rows), "senders": dict(senders), "me": me,
             "partner": partner, "group": group, "day_first": day_first}
    logger.info("%s: %s", file, stats)
    return ImportResult(rows, problems, stats)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


def split_on_silence(messages: list[Message], hours: float) -> list[list[Message]]:
    """Runs of messages with no gap longer than `hours` between neighbours."""
    segments: list[list[Message]] = []
    for m in messages:
        prev = segments[-1][-1] if segments else None
        if prev is None or (m.when and prev.when and (m.when - prev.when).total_seconds() > hours * 3600):
            segments.append([m])
        else:
            segments[-1].append(m)
    return segments


def merge_turns(messages: list[Message], me: str, prefix_names: bool = False) -> list[dict]:
    """Alternating user/assistant turns: consecutive messages of one side merged; leading `me` and trailing others dropped."""
    turns: list[dict] = []
    last_sender = None
    for m in messages:
        role = "assistant" if m.sender == me else "user"
        text = f"{m.sender}: {m.text}" if prefix_names and role == "user" and m.sender != last_sender else m.text
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + text
        else:
            turns.append({"role": role, "content": text})
        last_sender = m.sender
    while turns and turns[0]["role"] == "assistant":
        turns.pop(0)
    while turns and turns[-1]["role"] == "user":
        turns.pop()
    return turns


def pairs_of(turns: list[dict], max_pairs: int | None) -> list[list[dict]]:
    """Cut an alternating user/assistant list into examples of at most `max_pairs` pairs."""
    if not turns:
        return []
    step = 2 * max_pairs if max_pairs else len(turns)
    return [turns[i:i + step] for i in range(0, len(turns), step)]
