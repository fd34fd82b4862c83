"""The README and docs/ stay short, true to the contracts, and free of dead links."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from pathlib import Path

from mixip.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_the_api_page_lists_every_rpc_of_every_contract():
    listed = set(re.findall(r"^- `(\w+)`", (ROOT / "docs" / "api.md").read_text(), re.M))
    declared = {
        name
        for proto in (ROOT / "protos").rglob("*.proto")
        for name in re.findall(r"^\s*rpc (\w+)\(", proto.read_text(), re.M)
    }
    assert declared - listed == set(), "docs/api.md misses these RPCs"
    assert listed - declared == set(), "docs/api.md lists RPCs that no contract declares"


def test_every_test_a_doc_names_exists():
    """A `tests/<path>.py::test_name` reference in the README or docs/ names a test function
    defined in that file: the promise and retention tables cite no invented or renamed test."""
    missing = []
    for doc in DOCS:
        for path, name in re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", doc.read_text()):
            source = ROOT / path
            defined = source.exists() and re.search(
                rf"^(?:async )?def {name}\(", source.read_text(), re.M
            )
            if not defined:
                missing.append(f"{doc.relative_to(ROOT)} -> {path}::{name}")
    assert missing == []


def _command_examples(doc: Path) -> list[str]:
    """Every `mixip ...` (or `.venv/bin/mixip ...`) in a doc: the lines of its code blocks and
    its inline code, a table's `a\\|b` unescaped."""
    text = doc.read_text().replace("\\|", "|")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]
    return [c for c in lines + spans if re.match(r"(?:\.venv/bin/)?mixip ", c)]


# Values for the placeholders the parser checks the type of.
_PLACEHOLDER_VALUES = {"N": "1", "FACE": "0", "EVENT_ID": "1"}


def _argument_lists(example: str) -> list[list[str]]:
    """The argument lists an example stands for: optional parts `[...]` included, one list per
    alternative of `a|b`."""
    words = shlex.split(example.replace("[", " ").replace("]", " "), comments=True)[1:]
    if words and words[-1] == "&":
        words.pop()
    choices = [[_PLACEHOLDER_VALUES.get(w, w)] if "|" not in w else w.split("|") for w in words]
    return [list(argv) for argv in itertools.product(*choices)]


def _names_a_command(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """`mixip erase` in a sentence names a command: every word is a subcommand."""
    for word in argv:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subcommands or word not in subcommands[0].choices:
            return False
        parser = subcommands[0].choices[word]
    return bool(argv)


def _parses(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # a usage error exits 2; `mixip --version` prints and exits 0
            return exc.code == 0
    return True


def test_every_command_example_in_the_readme_and_the_cli_page_parses():
    """Parsed by the real parser, nothing run; a bare command name (`mixip erase`) need only
    name a command, and the general form `mixip [...] COMMAND` is not an example."""
    parser = build_parser()
    examples = [
        (doc, example)
        for doc in (ROOT / "README.md", ROOT / "docs" / "cli.md")
        for example in _command_examples(doc)
        if " COMMAND" not in example
    ]
    assert len(examples) > 40  # the extraction finds the tables and code blocks
    refused = []
    for doc, example in examples:
        for argv in _argument_lists(example):
            if not _names_a_command(parser, argv) and not _parses(parser, argv):
                refused.append(f"{doc.relative_to(ROOT)}: {example!r} as {argv}")
    assert refused == []
