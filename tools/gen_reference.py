"""Generate docs/reference.md from the docstrings of the public API (``actors.__all__``).

python tools/gen_reference.py          # rewrite docs/reference.md
python tools/gen_reference.py --check  # exit 1 if it is out of date (the tests do this)
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import actors

OUT = Path(__file__).resolve().parent.parent / "docs" / "reference.md"

SECTIONS = [
    ("Opening a runtime", ["open_runtime", "Runtime", "RuntimeStatistics"]),
    ("Actors", ["Actor", "query", "Retry", "Sql", "KV"]),
    ("Messages", ["Ref", "DeadLetter"]),
]


def _doc(obj: object) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "(undocumented)")


def _signature(obj: object) -> str:
    for resolve in (True, False):
        try:
            text = str(inspect.signature(obj, eval_str=resolve))  # type: ignore[arg-type]
        except Exception:
            continue
        return re.sub(r"\b(runtime\.\w+|typing|collections\.abc)\.|~", "", text)
    return ""


def _members(cls: type) -> list[str]:
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_") or name in ("retry", "migrations"):
            continue
        if isinstance(member, property):
            lines.append(f"- `{name}` (property): {_first_line(member)}")
        elif callable(member):
            lines.append(f"- `{name}{_signature(member)}`: {_first_line(member)}")
    return lines


def _first_line(obj: object) -> str:
    return _doc(obj).split("\n\n")[0].replace("\n", " ")


def render() -> str:
    out = [
        "# Reference",
        "",
        "Generated from the docstrings by `tools/gen_reference.py`; do not edit by hand.",
        "Everything here is importable from `actors`.",
        "",
    ]
    done: set[str] = set()
    for title, names in SECTIONS:
        out += [f"## {title}", ""]
        for name in names:
            done.add(name)
            obj = getattr(actors, name)
            out += [f"### `{name}{_signature(obj) if not isinstance(obj, type) else ''}`", ""]
            out += [_doc(obj), ""]
            if isinstance(obj, type):
                out += [*_members(obj), ""]
    errors = sorted(n for n in actors.__all__ if n not in done)
    out += ["## Errors", ""]
    for name in errors:
        obj = getattr(actors, name)
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        out += [f"### `{name}({bases})`", "", _doc(obj), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python tools/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
