"""The README's example outputs are what the service answers (scripts/readme_examples.py writes them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "scripts" / "readme_examples.py")
readme_examples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_examples)

BLOCKS = {m.group("name"): m.group("body") for m in readme_examples.BLOCK.finditer(readme_examples.README.read_text())}


def test_every_example_is_in_the_readme():
    assert set(BLOCKS) == set(readme_examples.EXAMPLES)


@pytest.mark.parametrize("name", list(readme_examples.EXAMPLES))
def test_readme_example_is_what_the_service_answers(name):
    assert BLOCKS[name] == readme_examples.render(name), (
        f"README block {name!r} is out of date: run python scripts/readme_examples.py")
