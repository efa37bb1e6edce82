"""`dqlrec import`: native public formats and any event log into the raw ``events`` and ``items`` tables.

Owns the command's flags and which formats exist; each format lives in its own module
(retailrocket, yoochoose, movielens, events), the reading and checking of rows in ``core``, and
the day partitions, items merge and quarantine in ``warehouse``. Heavy imports (pyarrow,
pandas) happen only when the command runs, so registering it costs the CLI nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FORMATS = ("retailrocket", "yoochoose", "movielens", "events")
_EVENTS_ONLY = (
    "map",
    "event_map",
    "event_type",
    "time_unit",
    "time_format",
    "delimiter",
    "columns",
    "items_map",
)


def add_parser(subcommands) -> argparse.ArgumentParser:
    """Register `dqlrec import` on the CLI's subparsers; ``func`` runs it."""
    p = subcommands.add_parser(
        "import",
        help="load a data set (RetailRocket, YOOCHOOSE, MovieLens, any CSV/Parquet log) into the raw tables",
        description="Write the raw events (one partition per day, replacing only the days in the input) and "
        "items tables from native files; refused rows go to the import quarantine with rule and line.",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="layout of the input files")
    p.add_argument("path", type=Path, help="the data set's folder, or its events/ratings/clicks file")
    p.add_argument("--items", type=Path, help="catalogue file or folder (default: found beside PATH)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.add_argument("--block-size-mib", type=int, default=32, help="MiB of CSV read per chunk (default 32)")
    p.add_argument(
        "--progress-every", type=int, default=1_000_000, help="rows between progress lines (stderr)"
    )
    g = p.add_argument_group("--format events (a generic CSV or Parquet log)")
    g.add_argument("--map", type=_pairs, default={}, help="contract=column,...: user_id, item_id, event_time, "
                   "event_type, value, session_id, category_id, price")  # fmt: skip
    g.add_argument(
        "--event-map", type=_pairs, default={}, help="value=event_type,...: e.g. click=view,buy=purchase"
    )
    g.add_argument("--event-type", help="one event type for every row (a file without an event type column)")
    g.add_argument(
        "--time-unit", choices=("s", "ms", "us", "ns"), help="integer timestamps since 1970 in this unit"
    )
    g.add_argument(
        "--time-format", help="strftime format of text timestamps (default ISO 8601; no zone = UTC)"
    )
    g.add_argument("--delimiter", help="CSV delimiter (default ','; 'tab' for a tab)")
    g.add_argument("--columns", type=lambda text: tuple(c.strip() for c in text.split(",")),
                   help="column names of a CSV without header line, comma separated")  # fmt: skip
    g.add_argument("--items-map", type=_pairs, default={}, help="contract=column for --items: item_id, category_id, "
                   "price, available")  # fmt: skip
    p.set_defaults(func=main)
    return p


def _pairs(text: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs separated by commas, got {part!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def main(args: argparse.Namespace) -> int:
    from dql_model.config import load_config

    cfg = load_config(args.config)
    summary = import_data(
        cfg.layout,
        args.format,
        args.path,
        items=args.items,
        block_size=args.block_size_mib << 20,
        progress_every=args.progress_every,
        lock_wait_s=cfg.warehouse.lock_wait_s,
        lock_stale_s=cfg.warehouse.lock_stale_s,
        **{name: getattr(args, name) for name in _EVENTS_ONLY},
    )
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(render(summary))
    return 0


def import_data(layout, format: str, path: Path, *, items: Path | None = None, block_size: int | None = None,
                progress_every: int | None = None, stream=None, lock_wait_s: float | None = None,
                lock_stale_s: float | None = None, **events_flags) -> dict:  # fmt: skip
    """Import ``path`` in ``format`` into the warehouse of ``layout``; returns the summary.

    ``lock_wait_s`` / ``lock_stale_s``: how long to wait for another import's lock, and when to take
    it over (default: the warehouse config's defaults).
    """
    from dql_model.importers import core, events, movielens, retailrocket, yoochoose
    from dql_model.importers.warehouse import ImportRun

    block_size = block_size or core.DEFAULT_BLOCK_SIZE
    given = {k: v for k, v in events_flags.items() if v not in (None, {}, ())}
    if format not in FORMATS:
        raise core.UnusableInput(f"unknown format {format!r}; known: {list(FORMATS)}")
    if format != "events" and given:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise core.UnusableInput(f"{flags} apply to --format events only ({format} has a fixed layout)")
    if format == "yoochoose" and items is not None:
        raise core.UnusableInput(
            "--items does not apply to yoochoose: categories come from the clicks, prices from the buys"
        )
    progress = core.Progress(progress_every or core.DEFAULT_PROGRESS_EVERY, stream)
    path = Path(path)
    with ImportRun(
        layout, format=format, progress=progress, lock_wait_s=lock_wait_s, lock_stale_s=lock_stale_s
    ) as run:
        if format == "retailrocket":
            return retailrocket.run(run, path, items=items, block_size=block_size)
        if format == "yoochoose":
            return yoochoose.run(run, path, block_size=block_size)
        if format == "movielens":
            return movielens.run(run, path, items=items, block_size=block_size)
        delimiter = given.pop("delimiter", ",")
        options = events.Options(
            mapping=given.get("map", {}),
            event_map=given.get("event_map", {}),
            event_type=given.get("event_type"),
            time_unit=given.get("time_unit"),
            time_format=given.get("time_format"),
            delimiter="\t" if delimiter in ("tab", "\\t") else delimiter,
            column_names=given.get("columns"),
            items_mapping=given.get("items_map", {}),
        )
        return events.run(run, path, options, items=items, block_size=block_size)


def render(summary: dict) -> str:
    """The closing lines of an import, for people."""
    lines = [f"imported {summary['format']} into {summary['warehouse']} in {summary['seconds']:.1f}s"]
    for f in summary["files"]:
        rules = ", ".join(f"{rule} {n:,}" for rule, n in f["rules"].items()) or "none"
        ignored = f", ignored {f['ignored']:,}" if f["ignored"] else ""
        lines.append(
            f"  {f['file']} ({f['role']}): {f['rows']:,} rows = accepted {f['accepted']:,}{ignored} "
            f"+ quarantined {f['quarantined']:,} (rules: {rules})"
        )
    dates = summary["dates"]
    lines.append(
        f"events: {len(dates)} day partitions written, {summary['first_date']} .. {summary['last_date']}; "
        f"items: {summary['items']['from_input']:,} from the input, {summary['items']['written']:,} in the table"
    )
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    for line in summary.get("recovered", ()):
        lines.append(f"recovered: {line}")
    if summary["quarantined"] or any(f["quarantined"] for f in summary["files"]):
        lines.append(f"quarantine: {Path(next(iter(summary['quarantine'].values()))).parent}")
    lines.append(
        f"input {summary['input']:,} = accepted {summary['accepted']:,} + quarantined {summary['quarantined']:,}"
    )
    return "\n".join(lines)
