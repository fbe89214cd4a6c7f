"""How ``torpor`` says things: tables, times, sizes, the reports of :mod:`runtime.ops` in text
and JSON, errors in the user's terms, and a progress bar."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import apsw
import attrs

from ..ops import inspect as _inspect
from ..replica.shipper import ACTORS_PREFIX

#: An instant as a message from the replica says it, in epoch seconds.
EPOCH_SECONDS = re.compile(r"\b(time|from|since) (\d+\.\d+)\b")


#: A replica's name of an actor's file (or of an object of it), quoted or not.
ACTOR_NAME = re.compile(
    rf"(?P<quote>'?)\b{ACTORS_PREFIX}/(?P<aid>[0-9a-f]{{32}})/(?P<rest>[^'\s]*)(?P=quote)"
)


def user_terms(text: str, names: dict[str, str], actors: dict[str, str] | None = None) -> str:
    """``text`` in the user's terms: each raw name in ``names`` (a temporary directory, a
    store's repr), quoted or not, replaced by what the user knows it as; a replica's names of
    the files of ``actors`` (by id) by ``data.db of TYPE 'KEY'``; and instants given in epoch
    seconds written as ISO-8601 times."""
    for raw in sorted(names, key=len, reverse=True):
        text = text.replace(repr(raw), names[raw]).replace(raw, names[raw])

    def actor_file(m: re.Match[str]) -> str:
        said = (actors or {}).get(m["aid"])
        if said is None:
            return m[0]
        return f"{m['rest']} of {said}" if m["rest"] else said

    text = ACTOR_NAME.sub(actor_file, text)
    return EPOCH_SECONDS.sub(lambda m: f"{m[1]} {iso(float(m[2]))}", text)


def iso(at: float) -> str:
    """An instant as ISO 8601 in UTC (what ``--at`` takes), to the microsecond, rounded up so
    that ``--at`` given it back includes that instant."""
    if not math.isfinite(at):
        return str(at)
    micros = math.ceil(at * 1_000_000)
    when = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(microseconds=micros)
    spec = "microseconds" if when.microsecond else "seconds"
    return when.isoformat(timespec=spec).replace("+00:00", "Z")


def error_text(exc: BaseException) -> str:
    if isinstance(exc, apsw.Error):
        return f"SQLite: {exc}"
    if isinstance(exc, KeyError | LookupError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def moment(at: float | None) -> str:
    if at is None:
        return "-"
    return _dt.datetime.fromtimestamp(at, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def size_text(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def at_text(at: float | None) -> str:
    if at is None:
        return "the latest state"
    when = _dt.datetime.fromtimestamp(at, _dt.UTC)
    return f"the state at {when.strftime('%Y-%m-%d %H:%M:%S')}.{when.microsecond // 1000:03d}Z"


def report_json(r: _inspect.ActorReport) -> dict[str, Any]:
    j = _inspect.to_json
    return {
        "actor": attrs.asdict(r.actor),
        "folder": r.folder,
        "files": r.files,
        "applied_seq": r.applied_seq,
        "created": r.created,
        "user_version": r.user_version,
        "tables": [
            {
                "name": t.name,
                "rows": t.rows,
                "columns": list(t.columns),
                "first_rows": j(t.first_rows),
            }
            for t in r.tables
        ],
        "kv": {k: j(v) for k, v in r.kv},
        "kv_count": r.kv_count,
        "inbox": [
            {
                "seq": m.seq,
                **_inspect.call_json(m.method, m.payload),
                "sender": m.sender,
                "attempts": m.attempts,
                "cancelled": m.cancelled,
                "enqueued_at": m.enqueued_at,
            }
            for m in r.inbox
        ],
        "turns": [
            {
                "seq": t.seq,
                "method": t.method,
                "status": t.status,
                "attempts": t.attempts,
                "cancelled": t.cancelled,
                "steps": [{**attrs.asdict(s), "value": j(s.value)} for s in t.steps],
            }
            for t in r.turns
        ],
        "events": [
            {
                "id": e.id,
                "name": e.name,
                "payload": j(_inspect.decode(e.payload)),
                "sent_at": e.sent_at,
            }
            for e in r.events
        ],
        "timers": [
            {
                "name": t.name,
                **_inspect.call_json(t.method, t.payload),
                "due_at": t.due_at,
                "every": t.every,
                "cron": t.cron,
            }
            for t in r.timers
        ],
        "dead_letters": [dead_letter_json(d) for d in r.dead_letters],
        "replication": r.replication,
    }


def dead_letter_json(d: _inspect.DeadLetterView) -> dict[str, Any]:
    return {
        "seq": d.seq,
        **_inspect.call_json(d.method, d.payload),
        "sender": d.sender,
        "idempotency_key": d.idempotency_key,
        "attempts": d.attempts,
        "error_type": d.error_type,
        "error_message": d.error_message,
        "traceback": d.traceback,
        "failed_at": d.failed_at,
        "reason": d.reason,
    }


def report_text(r: _inspect.ActorReport) -> str:
    a = r.actor
    out = [f"{a.type} {a.key!r}  {a.status}" + (f" ({a.stopped})" if a.stopped else "")]
    files = ", ".join(f"{name} {size_text(size)}" for name, size in r.files.items()) or "none yet"
    fields = [
        ("folder", r.folder),
        ("files", files),
        ("created", moment(a.created_at) + ("" if r.created else "  (on_create not run yet)")),
        ("pending", "yes" if a.pending else "no"),
        ("next wake-up", moment(a.wake_at)),
        ("applied up to", f"message {r.applied_seq}"),
        ("schema", f"user_version {r.user_version}"),
        ("replication", r.replication),
    ]
    if a.parent:
        fields.insert(0, ("parent", a.parent))
    out += [f"  {name:<14}{value}" for name, value in fields]

    def section(title: str, count: int, body: list[str]) -> None:
        out.append("")
        out.append(f"{title} ({count})" if count else f"{title}: none")
        out.extend("  " + line for text in body for line in text.splitlines())

    section(
        "Tables",
        len(r.tables),
        [
            f"{t.name}: {plural(t.rows, 'row')}"
            + (
                "\n"
                + indent(
                    table(t.columns, [[_inspect.show(v, 40) for v in row] for row in t.first_rows])
                )
                if t.first_rows
                else f"  ({', '.join(t.columns)})"
            )
            + (f"\n  ... {t.rows - len(t.first_rows)} more" if t.rows > len(t.first_rows) else "")
            for t in r.tables
        ],
    )
    kv_body = [table(["KEY", "VALUE"], [[k, _inspect.show(v)] for k, v in r.kv])] if r.kv else []
    if r.kv_count > len(r.kv):
        kv_body.append(f"... {r.kv_count - len(r.kv)} more (--json shows the same first ones)")
    section("KV", r.kv_count, kv_body)
    section(
        "Inbox, not yet applied",
        len(r.inbox),
        [
            table(
                ["SEQ", "CALL", "SENDER", "ATTEMPTS", "ENQUEUED"],
                [
                    [
                        m.seq,
                        _inspect.show_call(m.method, m.payload),
                        m.sender or "-",
                        f"{m.attempts} (cancelled)" if m.cancelled else m.attempts,
                        moment(m.enqueued_at),
                    ]
                    for m in r.inbox
                ],
            )
        ]
        if r.inbox
        else [],
    )
    turn_body = []
    for t in r.turns:
        turn_body.append(
            f"message {t.seq} {t.method}: {t.status}, {plural(t.attempts, 'failed attempt')}"
        )
        turn_body.append(
            indent(
                table(
                    ["STEP", "KIND", "NAME", "STATUS", "ATTEMPTS", "UNTIL", "RESULT"],
                    [
                        [
                            s.number,
                            s.kind,
                            s.name,
                            s.status,
                            s.attempts,
                            moment(s.until),
                            _inspect.show(s.value, 40),
                        ]
                        for s in t.steps
                    ],
                )
            )
        )
    section("Turns in flight", len(r.turns), turn_body)
    section(
        "Events not yet consumed",
        len(r.events),
        [
            table(
                ["ID", "NAME", "PAYLOAD", "SENT"],
                [
                    [e.id, e.name, _inspect.show(_inspect.decode(e.payload)), moment(e.sent_at)]
                    for e in r.events
                ],
            )
        ]
        if r.events
        else [],
    )
    section(
        "Timers",
        len(r.timers),
        [
            table(
                ["NAME", "CALL", "DUE", "EVERY", "CRON"],
                [
                    [
                        t.name,
                        _inspect.show_call(t.method, t.payload),
                        moment(t.due_at),
                        "-" if t.every is None else f"{t.every:g} s",
                        t.cron or "-",
                    ]
                    for t in r.timers
                ],
            )
        ]
        if r.timers
        else [],
    )
    section(
        "Dead letters",
        len(r.dead_letters),
        [dead_letters_table(r.dead_letters)] if r.dead_letters else [],
    )
    return "\n".join(out)


def indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def dead_letters_table(letters: Sequence[_inspect.DeadLetterView]) -> str:
    return table(
        ["SEQ", "CALL", "REASON", "ATTEMPTS", "ERROR", "FAILED"],
        [
            [
                d.seq,
                _inspect.show_call(d.method, d.payload, 40),
                d.reason,
                d.attempts,
                short(f"{d.error_type.rpartition('.')[2]}: {d.error_message}"),
                moment(d.failed_at),
            ]
            for d in letters
        ],
    )


def short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def turn_text(t: Any) -> str:
    return f"{t.method} (message {t.seq})"


def describe_waits(turns: Sequence[Any]) -> list[str]:
    """What the turns in flight (``Runtime.turns``) wait for durably, one line each."""
    out = []
    for t in turns:
        step = next((s for s in reversed(t.steps) if s.status == "waiting"), None)
        if step is None:
            continue
        if step.kind == "event":
            what = f"event {step.name!r}" + (
                f" (or its deadline, {iso(step.until)})" if step.until is not None else ""
            )
        elif step.kind == "sleep" and step.until is not None:
            what = f"the end of a durable sleep, at {iso(step.until)}"
        else:
            what = f"{step.kind} {step.name!r}"
        out.append(f"{turn_text(t)} waits for {what}")
    return out


class Progress:
    """A progress bar on stderr, redrawn in place with ``\\r``, only when stderr is a terminal."""

    WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.drawn = 0  # characters on the line
        self.last = 0.0

    def note(self, text: str) -> None:
        if self.tty:
            line = f"{self.label}: {text}"
            sys.stderr.write(f"\r{line.ljust(self.drawn)}")  # spaces cover a longer line
            sys.stderr.flush()
            self.drawn = len(line)

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or (done < total and now - self.last < 0.1):
            return
        self.last = now
        filled = self.WIDTH * done // total if total else self.WIDTH
        self.note(f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} actors")

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = 0
