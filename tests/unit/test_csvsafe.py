"""The CSV cell escape (OWASP CSV injection): a table of cells and what a file must hold."""

from __future__ import annotations

import pytest

from app.csvsafe import neutralise_cell, restore_cell, safe_row

CELLS = [
    ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
    ("+1+2", "'+1+2"),
    ("-bob@shop.example", "'-bob@shop.example"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\tcmd", "'\tcmd"),
    ("\rcmd", "'\rcmd"),
    ("'=already", "''=already"),
    ("'plain", "''plain"),
    ("Bakery Müller", "Bakery Müller"),
    ("a=b", "a=b"),
    ("", ""),
    ("$argon2id$v=19$m=65536", "$argon2id$v=19$m=65536"),
]


@pytest.mark.parametrize(("cell", "written"), CELLS)
def test_text_cells_are_neutralised_and_restored_exactly(cell: str, written: str) -> None:
    assert neutralise_cell(cell) == written
    assert restore_cell(written) == cell


def test_numbers_are_left_as_numbers() -> None:
    assert safe_row([-5, 0, 12, "=x"]) == [-5, 0, 12, "'=x"]
