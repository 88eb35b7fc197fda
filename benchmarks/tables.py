"""The result tables every benchmark prints: aligned plain text, and markdown for the README."""

from __future__ import annotations


def plain_table(rows: list[list[str]]) -> str:
    """Right-aligned columns, a dashed rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    """The same rows as a markdown table, first row as header."""
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("---:" for _ in rows[0]) + "|")
    return "\n".join(lines)


def print_tables(rows: list[list[str]], markdown: bool) -> None:
    """The plain table, then (when asked) the same rows as markdown."""
    print(plain_table(rows))
    if markdown:
        print()
        print(markdown_table(rows))
