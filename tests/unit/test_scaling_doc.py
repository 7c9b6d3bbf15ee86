"""docs/scaling.md runs as written: every `benchmarks/scaling.py ...` it shows (in a shell block
or inline) passes flags the script's parser takes, and the doc is linked from the README and
from performance.md. (tests/integration/test_scaling_script.py runs the script itself.)"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from pathlib import Path

import pytest

from tests.unit import docs_support as docs

BENCHMARKS = docs.ROOT / "benchmarks"
DOC = docs.ROOT / "docs" / "scaling.md"


def _parser() -> argparse.ArgumentParser:
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling modules by name
    try:
        script = importlib.import_module("scaling")
    finally:
        sys.path.remove(str(BENCHMARKS))
    parser: argparse.ArgumentParser = script.parser()
    return parser


def _invocations(text: str) -> list[tuple[int, list[str]]]:
    found = []
    for number, code, _ in docs.snippets(text):
        if "scaling.py" not in code:
            continue
        words = shlex.split(code)
        for at, word in enumerate(words):
            if word.endswith("scaling.py"):
                args = words[at + 1 :]
                cut = next((i for i, w in enumerate(args) if w in {"|", ">", "2>", "&&"}), None)
                found.append((number, args[:cut]))
    return found


def test_every_command_the_doc_shows_parses() -> None:
    parser = _parser()
    shown = _invocations(DOC.read_text(encoding="utf-8"))
    assert len(shown) >= 3, shown
    for number, args in shown:
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"docs/scaling.md:{number}: scaling.py refuses {' '.join(args)!r}")


def test_a_wrong_flag_is_caught() -> None:
    parser = _parser()
    [(_, args)] = _invocations("```bash\npython benchmarks/scaling.py --consumers 3\n```\n")
    with pytest.raises(SystemExit):
        parser.parse_args(args)


@pytest.mark.parametrize("linking", ["README.md", "docs/performance.md"])
def test_the_doc_is_linked(linking: str) -> None:
    text = (docs.ROOT / linking).read_text(encoding="utf-8")
    assert "scaling.md" in text


def test_the_doc_is_among_the_checked_docs() -> None:
    assert DOC in docs.DOCS and Path(DOC).exists()
