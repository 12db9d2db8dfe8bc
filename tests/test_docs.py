"""The README's reference tables are the code's own tables (python -m sqlite_rest.docs)."""
from pathlib import Path

from sqlite_rest.docs import render, sections

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tables_match_the_code():
    text = README.read_text(encoding="utf-8")
    for name in sections():
        assert f"<!-- BEGIN generated:{name} -->" in text, f"README lacks the {name} table"
    assert render(text) == text, "README is stale: run `python -m sqlite_rest.docs`"
