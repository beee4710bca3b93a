"""Reporting helpers the verbs share: Markdown tables (sweep results, compare's report, bench's
table) and matplotlib set up for writing figures to files (a sweep's score.png, compare's curves)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ALIGNMENTS = {"l": "---", "r": "---:"}  # a column's separator cell: left (Markdown's default) or right


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], align: str = "") -> str:
    """A Markdown table: `headers`, then one line per row, every cell as str() gives it. `align`:
    one letter per column, l (left, the default) or r (right), e.g. "lrrl"."""
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - set(ALIGNMENTS):
        raise ValueError(f"align needs one of {sorted(ALIGNMENTS)} per column ({len(headers)}), got {align!r}")
    lines = [row_line(headers), "|" + "".join(f"{ALIGNMENTS[a]}|" for a in align)]
    return "\n".join(lines + [row_line(row) for row in rows])


def row_line(cells: Sequence) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures go to files, never to a display."""
    # Imported here: matplotlib is an optional dependency (extras test, bench, tune), needed only
    # by the verbs that draw, and only once they draw.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
