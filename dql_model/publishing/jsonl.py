"""A night's lists as JSON Lines, one object per user, in the shape of AWS Personalize's batch output.

Owns that file's layout (``publish.export_jsonl`` writes it next to the Parquet parts)::

    {"input":{"userId":"u1"},"output":{"recommendedItems":["i7","i2"],"scores":[0.93,0.41]},"model_version":"20261127-ab12cd34","run_date":"2026-11-27"}

Users in user_id order (UTF-8 bytes), items in rank order, scores as the Parquet rows hold them
(the shortest text that reads back as the same double). The lines are assembled with Arrow compute
kernels over a chunk of users at a time, with no Python loop per user or row, and written straight
from the Arrow string buffer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dql_model.contract import schema

JSONL_NAME = "recommendations.jsonl"
"""The file's name in the date's export folder (not ``part-*``: a Redshift COPY of the parts skips it)."""
USERS_PER_CHUNK = 100_000
"""Lines assembled at once: bounds the memory beside the table to about this many lines."""


def json_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each string as a JSON string literal, quotes included (RFC 8259: backslash, quote and control
    characters escaped; other characters as UTF-8)."""
    out = pc.replace_substring(values, "\\", "\\\\")
    out = pc.replace_substring(out, '"', '\\"')
    if pc.any(pc.match_substring_regex(out, "[\\x00-\\x1f]")).as_py():  # rare: 32 passes only then
        for code in range(32):
            out = pc.replace_substring(out, chr(code), f"\\u{code:04x}")
    return pc.binary_join_element_wise('"', out, '"', "")


def json_numbers(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Doubles as JSON numbers (Arrow's shortest round-trip text); NaN and infinities as null."""
    text = pc.cast(values, pa.string())
    return pc.if_else(pc.fill_null(pc.is_finite(values), False), text, "null")


def write_jsonl(table: pa.Table, path: str | Path, *, run_date: str) -> int:
    """Write ``table`` (recommendations rows, the contract's columns) to ``path`` as JSON Lines; returns
    the number of lines (users)."""
    for column in (schema.USER_ID, schema.ITEM_ID, schema.MODEL_VERSION):
        nulls = table.column(column).null_count
        if nulls:
            raise ValueError(f"recommendations column {column} has {nulls} nulls; the contract refuses them")
    ordered = table.sort_by([(schema.USER_ID, "ascending"), (schema.RANK, "ascending")])
    users = ordered.column(schema.USER_ID).combine_chunks()
    changes = pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False) if len(users) > 1 else []
    starts = np.concatenate([[0], np.flatnonzero(changes) + 1, [len(users)]]).astype(np.int64)
    n_users = len(starts) - 1 if len(users) else 0
    with open(path, "wb") as out:
        for first in range(0, n_users, USERS_PER_CHUNK):
            last = min(first + USERS_PER_CHUNK, n_users)
            lo, hi = int(starts[first]), int(starts[last])
            _write_lines(out, ordered.slice(lo, hi - lo), starts[first : last + 1] - lo, run_date)
    return n_users


def _write_lines(out, rows: pa.Table, offsets: np.ndarray, run_date: str) -> None:
    """One line per user of ``rows`` (sorted, user u's rows at offsets[u]:offsets[u + 1])."""
    column = {name: rows.column(name).combine_chunks() for name in rows.column_names}
    lists = pa.array(offsets, pa.int32())
    firsts = pa.array(offsets[:-1])
    items = pc.binary_join(pa.ListArray.from_arrays(lists, json_strings(column[schema.ITEM_ID])), ",")
    scores = pc.binary_join(pa.ListArray.from_arrays(lists, json_numbers(column[schema.SCORE])), ",")
    lines = pc.binary_join_element_wise(
        '{"input":{"userId":',
        json_strings(column[schema.USER_ID].take(firsts)),
        '},"output":{"recommendedItems":[',
        items,
        '],"scores":[',
        scores,
        ']},"model_version":',
        json_strings(column[schema.MODEL_VERSION].take(firsts)),
        ',"run_date":',
        pa.scalar(f'"{schema.iso_date(run_date)}"'),
        "}\n",
        "",
    )
    lines = pc.cast(
        lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines, pa.large_string()
    )
    # The lines lie back to back in the string buffer: write that span as it is.
    ends = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=len(lines) + 1, offset=lines.offset * 8)
    out.write(memoryview(lines.buffers()[2])[int(ends[0]) : int(ends[-1])])
