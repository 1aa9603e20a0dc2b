"""Shared terminal plumbing: stdout for results (tables or JSON), stderr for progress and warnings."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# Wide when piped (CI logs, grep): tables must not wrap into unreadable columns.
out = Console(highlight=False)
if not out.is_terminal:
    out = Console(highlight=False, width=200)
err = Console(stderr=True, highlight=False)
if not err.is_terminal:
    err = Console(stderr=True, highlight=False, width=200)


def print_json(data: Any) -> None:
    """Machine output: plain JSON on stdout, nothing else there."""
    sys.stdout.write(json.dumps(data, indent=2, default=_default) + "\n")


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]], numeric: set[int] | None = None) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    numeric = numeric or set()
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i in numeric else "left")
    for r in rows:  # plain values are escaped: a shape like [batch, 1, 8, 8] is not a style tag
        t.add_row(*(x if isinstance(x, Text) else escape(str(x)) for x in r))
    return t


def verdict(ok: bool, good: str = "pass", bad: str = "FAIL", detail: str = "") -> Text:
    text = Text(good if ok else bad, style="green" if ok else "red")
    if detail and not ok:
        text.append(f" {detail}")
    return text


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")
