"""docs/marketing-tables.md documents every column of what marketing reads, with the contract's types."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dql_model.contract import schema
from dql_model.publishing import audiences, publish

DOC = Path(__file__).resolve().parents[2] / "docs" / "marketing-tables.md"


def documented(section: str) -> dict[str, str]:
    """column -> type cell of the first table under the heading ``section``."""
    text = DOC.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", body, flags=re.MULTILINE))


PARTITION = "date (partition, `YYYY-MM-DD`)"


@pytest.mark.parametrize(
    ("section", "columns"),
    [
        ("recommendations", schema.arrow_schema(schema.RECOMMENDATIONS)),
        ("campaign_audiences", audiences.COLUMNS),
    ],
)
def test_every_column_is_documented_with_its_type(section, columns):
    expected = {schema.RUN_DATE: PARTITION} | {field.name: str(field.type) for field in columns}
    assert documented(section) == expected


def test_every_manifest_field_is_documented():
    fields = {f.name for f in dataclasses.fields(publish.Manifest)}
    fields |= {f"files[].{f.name}" for f in dataclasses.fields(publish.ManifestFile)}
    fields |= {f"jsonl.{f.name}" for f in dataclasses.fields(publish.ManifestFile)}
    assert set(documented("The export and its manifest")) == fields


def test_every_source_is_explained():
    row = next(line for line in DOC.read_text().splitlines() if line.startswith("| `source` |"))
    assert {s for s in schema.SOURCES if f"`{s}`" not in row} == set()
