"""Facts the docs state about the code, checked against the code: the config keys with their
defaults, and the bounds. Regenerate the key table with ``python -m tests.test_doc_facts``."""
from __future__ import annotations

import re
from pathlib import Path

from pretrain import estimators
from pretrain.config import PretrainConfig, config_keys

ROOT = Path(__file__).resolve().parents[1]


def key_table() -> str:
    """docs/pretraining.md's table of config keys, from the dataclasses' defaults and help."""
    rows = ["| key | default | what it does |", "| --- | --- | --- |"]
    for key, default, help in config_keys(PretrainConfig):
        help = help.replace("|", "\\|").replace("<", "\\<")  # a table cell, not a column or an HTML tag
        rows.append(f"| `{key}` | `{default}` | {help} |")
    return "\n".join(rows) + "\n"


def section(page: str, heading: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    body = text[text.index(f"\n## {heading}\n") + len(heading) + 5:]
    return body[:body.index("\n## ")] if "\n## " in body else body


def test_every_config_key_says_what_it_does_and_the_docs_table_is_the_code_s():
    assert [key for key, _, help in config_keys(PretrainConfig) if not help] == []  # setting(default, help=...)
    table = re.search(r"^\| key \|.*?(?=\n(?!\|))", section("pretraining.md", "Config keys"), re.S | re.M)
    assert table and table.group(0) + "\n" == key_table(), "regenerate it: python -m tests.test_doc_facts"


def test_defaults_named_in_the_docs_are_the_code_s():
    defaults = {key: default for key, default, _ in config_keys(PretrainConfig)}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = [(page.name, key, value) for page in pages
             for key, value in re.findall(r"`(\w+\.\w+)` \(default `([^`]*)`\)", page.read_text())]
    assert named, "design.md names run.root's default"
    assert [n for n in named if defaults.get(n[1]) != n[2]] == []


def test_the_design_page_lists_the_registered_bounds_in_order():
    line = next(l for l in (ROOT / "docs" / "design.md").read_text().splitlines() if l.startswith("- `names() -> list[str]`"))
    assert re.findall(r"`([a-z-]+)`", line.split(":", 1)[1]) == estimators.names()


if __name__ == "__main__":
    print(key_table(), end="")
