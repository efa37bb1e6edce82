"""README.md and docs/*.md name only what exists: `dqlrec` commands, config keys, linked files; the README stays short.

Names are read from code (fenced blocks and inline code spans), where the docs write commands and keys;
prose says "dqlrec and RecBole". Fenced blocks marked ``text`` hold a program's output, not commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from dql_model import cli, config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220

_FENCE = re.compile(r"^[ \t]*```(?P<lang>[^\n`]*)\n(?P<body>.*?)^[ \t]*```", flags=re.MULTILINE | re.DOTALL)
_COMMAND = re.compile(r"(?:^|[\s/`(|;$])dqlrec ([a-z][a-z-]*)(?: ([a-z][a-z|]*))?", flags=re.MULTILINE)
_KEY = re.compile(r"(?:^|(?<=[\s(,\[]))(?P<section>[a-z_]+)\.(?P<field>\*|[a-z_][a-z0-9_]*\*?)(?![\w/.-])")
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
CODE_FOLDERS = ("dql_model", "jobs", "dags", "benchmarks")


def _code(text: str) -> str:
    """The code of a page: fenced blocks (except program output) and inline code spans."""
    fenced = [m["body"] for m in _FENCE.finditer(text) if m["lang"].strip() != "text"]
    return "\n".join([*fenced, *_inline_spans(text)])


def _inline_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks; a span may wrap onto the next line, as Markdown allows."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", _FENCE.sub("", text))]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


FILE_SUFFIXES = {
    "py",
    "json",
    "jsonl",
    "md",
    "yaml",
    "yml",
    "safetensors",
    "parquet",
    "png",
    "html",
    "csv",
    "sh",
    "lock",
    "log",
}
"""`model.safetensors`, `config.json`: file names, not keys."""


def _is_code_reference(section: str, name: str) -> bool:
    """`publish.publish_run`, `simulator.py`, `model.safetensors`: a file, or a module named like a config
    section and one of its names."""
    if name in FILE_SUFFIXES:
        return True
    for folder in CODE_FOLDERS:
        for module in (ROOT / folder).rglob(f"{section}.py"):
            defined = rf"^(?:def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]"
            if re.search(defined, module.read_text(), flags=re.MULTILINE):
                return True
    return False


def _config_keys() -> set[str]:
    """Every key a config file or DQLREC_ variable may set, old names that still work included."""
    defaults = config.Config()
    keys = {
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(config.Config)
        for field in dataclasses.fields(getattr(defaults, section.name))
    }
    return keys | {f"{section}.{name}" for section, name in config.LEGACY_FIELDS}


def _known(key: str, keys: set[str]) -> bool:
    if key.endswith("*"):
        return any(k.startswith(key[:-1]) for k in keys)
    return key in keys


def test_the_pages_exist_and_the_readme_links_each_docs_page():
    readme = (ROOT / "README.md").read_text()
    docs = [p for p in PAGES if p.parent.name == "docs"]
    assert {p.name for p in docs} >= {"evaluation.md", "operations.md", "data-contract.md", "production.md"}
    unlinked = [p.name for p in docs if f"docs/{p.name}" not in readme]
    assert unlinked == [], f"README.md links no page of these: {unlinked}"


def test_the_readme_fits_on_a_few_screens():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, at most {README_MAX_LINES}: move a section to docs/"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dqlrec_command_named_is_a_subcommand(page):
    commands = _subcommands(cli.build_parser())
    stale = []
    for match in _COMMAND.finditer(_code(page.read_text())):
        command, word = match[1], match[2]
        if command not in commands:
            stale.append(f"dqlrec {command}")
            continue
        nested = _subcommands(commands[command])
        if nested and word:
            stale += [f"dqlrec {command} {name}" for name in word.split("|") if name and name not in nested]
    assert stale == [], f"{page.name} names commands the CLI does not have: {sorted(set(stale))}"


def test_the_command_pattern_finds_what_the_pages_write():
    """The scan reads a command where the docs write one, and nothing in program output."""
    text = "`.venv/bin/dqlrec evaluate` and `dqlrec models show V`\n```bash\nX=$(dqlrec demo-date)\n```\n"
    text += "```text\ndqlrec run 2026-11-27: done\n```\n"
    found = sorted((m[1], m[2] or "") for m in _COMMAND.finditer(_code(text)))
    assert found == [("demo-date", ""), ("evaluate", ""), ("models", "show")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_config_key_named_is_a_field_of_the_config(page):
    sections = {f.name for f in dataclasses.fields(config.Config)}
    keys = _config_keys()
    stale = []
    for span in _inline_spans(page.read_text()):
        for match in _KEY.finditer(span):
            section, name = match["section"], match["field"]
            if section not in sections or _is_code_reference(section, name):
                continue
            key = f"{section}.{name}"
            if not _known(key, keys):
                stale.append(key)
    assert stale == [], (
        f"{page.name} names config keys that dql_model.config.Config does not have: {sorted(set(stale))}"
    )


def test_the_key_pattern_reads_keys_wildcards_and_leaves_code_alone():
    keys = _config_keys()
    spans = ["train.epochs", "train.mode: supervised", "etl.reward_*", "dqlrec config etl.max_len", "simulator.py",
             "model.safetensors", "publish.publish_run", "schema.OPE_ESTIMATORS", "train.epoch", "score.nope_*"]  # fmt: skip
    found = [
        (f"{m['section']}.{m['field']}", _known(f"{m['section']}.{m['field']}", keys))
        for span in spans
        for m in _KEY.finditer(span)
        if not _is_code_reference(m["section"], m["field"])
    ]
    assert found == [
        ("train.epochs", True),
        ("train.mode", True),
        ("etl.reward_*", True),
        ("etl.max_len", True),
        ("train.epoch", False),
        ("score.nope_*", False),
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file(page):
    missing = []
    for match in _LINK.finditer(page.read_text()):
        target = match["target"].split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # an anchor on the page, or a URL
            continue
        if not (page.parent / target).exists():
            missing.append(match["target"])
    assert missing == [], f"{page.relative_to(ROOT)} links files that do not exist: {missing}"
