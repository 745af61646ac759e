"""CSV cells that a spreadsheet cannot run as formulas (OWASP "CSV Injection").

A cell starting with ``= + - @``, a tab or a carriage return is read by Excel, LibreOffice
and Google Sheets as a formula (``=HYPERLINK(...)`` in a customer name). Such text cells get
a leading apostrophe, which spreadsheets show as text. A cell that already starts with an
apostrophe gets one more, so ``restore_cell`` can undo the escape exactly (the mailbox export
must import again unchanged). Numbers are written as they are: only text is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = "'"


def neutralise_cell(value: object) -> object:
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, _ESCAPE)):
        return _ESCAPE + value
    return value


def safe_row(cells: Iterable[object]) -> list[object]:
    """The row to hand to ``csv.writer.writerow``: every text cell neutralised."""
    return [neutralise_cell(cell) for cell in cells]


def restore_cell(value: str) -> str:
    """Undo ``neutralise_cell`` for a cell read back from one of our own files."""
    if value.startswith(_ESCAPE) and value[1:].startswith((*FORMULA_STARTS, _ESCAPE)):
        return value[1:]
    return value
