"""Tables a chapter prints, as real HTML tables in the book.

myst-nb renders a code cell's ``text/markdown`` output as CommonMark, which has no tables, so a
``Markdown("| a | b |")`` output reaches the page as one paragraph of pipes. A ``text/html`` output is
placed in the page as it is, so chapters print tables through :func:`html_table`.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence


class Table:
    """An HTML table that shows in Jupyter, in the built book and as plain text in a terminal."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence], caption: str | None = None):
        self.header = [str(h) for h in header]
        self.rows = [[_cell(v) for v in row] for row in rows]
        for i, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(f"row {i} has {len(row)} cells but the header has {len(self.header)}; "
                                 "give every row one value per column")
        self.caption = caption

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in self.rows)
        caption = f"<caption>{esc(self.caption)}</caption>" if self.caption else ""
        return (f'<table class="sparselib-table">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")

    def __repr__(self) -> str:
        widths = [max(len(c) for c in col) for col in zip(self.header, *self.rows)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([line(self.header)] + [line(r) for r in self.rows])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def html_table(rows: Sequence[Mapping] | Sequence[Sequence], header: Sequence[str] | None = None,
               caption: str | None = None) -> Table:
    """A table from a list of dicts (keys become the header, in order) or of rows with ``header``.

    Floats are shown to 4 significant digits; format them yourself for anything else.
    """
    rows = list(rows)
    if header is None:
        if not rows or not isinstance(rows[0], Mapping):
            raise TypeError("pass header=[...] when the rows are sequences rather than dicts")
        header = list(rows[0])
        rows = [[row[k] for k in header] for row in rows]
    elif rows and isinstance(rows[0], Mapping):
        rows = [[row[k] for k in header] for row in rows]
    return Table(header, rows, caption)
