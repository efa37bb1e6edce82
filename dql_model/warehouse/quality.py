"""Great Expectations checks of the data contract, on pandas DataFrames.

Two gates of the nightly run use them: the raw events partition before the Spark jobs (a few bad
rows are tolerated, because ``build_training_data`` quarantines them; a broken schema or too many
bad rows fail the run) and the scored recommendations before anything is published (any failure
fails the run).

Great Expectations is imported lazily and its ephemeral context is built once per process: the
import alone takes seconds, and a module that only needs ``DataQualityError`` should not pay it.

Column types are checked with pandas/pyarrow rather than ``ExpectColumnTypeToBe``: that
expectation compares exact pandas dtypes (``datetime64[us, UTC]`` is not ``datetime64[ns, UTC]``,
``int32`` is not ``int64``), which depend on how the frame was converted, not on the data.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dql_model.contract import rules, schema
from dql_model.contract.layout import DATA_DOCS_STORE
from dql_model.errors import EmptyInput, InputError, MissingInput

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.expectations.expectation import Expectation

    from dql_model.config import Config

log = logging.getLogger(__name__)
BLANK = r"^\s*$"
"""An id that is empty or only whitespace."""
SAMPLE_SIZE = 3
"""Distinct offending values quoted per failed rule."""

EXPECT_COLUMN_TO_EXIST = "expect_column_to_exist"
EXPECT_COLUMN_TYPE = "expect_column_type_to_be"

_TABLE_LABEL = {schema.EVENTS: "raw events", schema.RECOMMENDATIONS: "recommendations"}
_ADVICE = {
    schema.EVENTS: (
        "Rows that break a row rule are quarantined by build_training_data; a schema failure or more bad "
        "rows than quality.max_bad_fraction (DQLREC_QUALITY__MAX_BAD_FRACTION) stops the run. Fix the "
        "partition at its source (or raise the limit if the data is known to be acceptable) and rerun the date."
    ),
    schema.RECOMMENDATIONS: (
        "Nothing was published: the previous export stays in place. Fix the scoring step (or pin a known-good "
        "model) and rerun the date."
    ),
}


class DataQualityError(InputError, ValueError):
    """A table broke its data contract; ``report`` holds the details (bad input: not retried)."""

    def __init__(self, report: QualityReport):
        super().__init__(report.message())
        self.report = report


@dataclass(frozen=True)
class RuleFailure:
    """One rule broken by a table: which column, which expectation, how many rows, examples."""

    partition: str
    """Partition checked, e.g. ``event_date=2026-11-20``."""
    column: str | None
    """Column (``a, b`` for a compound rule); None for a table-level rule."""
    rule: str
    """Great Expectations expectation type, e.g. ``expect_column_values_to_not_be_null``."""
    unexpected_count: int
    """Rows breaking the rule (0 for a schema or table-level failure)."""
    row_count: int
    """Rows in the partition."""
    samples: tuple[Any, ...] = ()
    """A few distinct offending values."""
    blocking: bool = True
    """True when this failure fails the check; False when it is within the tolerated share."""
    detail: str = ""
    """What was wrong when it is not a row count (missing column, wrong type, rule not evaluable)."""
    contract_rule: str = ""
    """The row rule of dql_model.contract.rules it checks (raw events), the quarantine's name for those rows."""

    @property
    def fraction(self) -> float:
        return self.unexpected_count / self.row_count if self.row_count else 0.0

    def describe(self) -> str:
        if not self.column:
            where = "table"
        elif ", " in self.column:
            where = f"columns ({self.column})"
        else:
            where = f"column {self.column}"
        text = f"{where}, rule {self.rule}: "
        if self.detail:
            text += self.detail
        else:
            text += f"{self.unexpected_count} of {self.row_count} rows ({_percent(self.fraction)})"
        if self.samples:
            text += f", e.g. {list(self.samples)!r}"
        if self.contract_rule:
            text += f" [contract rule {self.contract_rule}: {rules.rule(self.contract_rule).description}]"
        return text


@dataclass
class QualityReport:
    """Outcome of one check: every broken rule, and whether the table passes."""

    table: str
    """Contract table checked (schema.EVENTS, schema.RECOMMENDATIONS)."""
    partition: str
    """Partition checked, e.g. ``event_date=2026-11-20`` or ``run_date=2026-11-27``."""
    row_count: int
    """Rows checked."""
    failures: list[RuleFailure] = field(default_factory=list)
    """Every broken rule, blocking or tolerated."""
    max_bad_fraction: float | None = None
    """Share of rows a row rule may break (raw events); None when any failure blocks."""
    extra_columns: tuple[str, ...] = ()
    """Columns outside the contract (raw events: not read by the pipeline, reported, not a failure)."""
    warnings: list[str] = field(default_factory=list)
    """Findings that fail nothing but must be seen: extra columns, an empty partition let through."""
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Raw events: the input volume and drift figures (``input_drift``) by name, with their level."""

    @property
    def success(self) -> bool:
        return not any(f.blocking for f in self.failures)

    @property
    def blocking(self) -> list[RuleFailure]:
        return [f for f in self.failures if f.blocking]

    @property
    def tolerated(self) -> list[RuleFailure]:
        return [f for f in self.failures if not f.blocking]

    def message(self) -> str:
        label = f"{_TABLE_LABEL.get(self.table, self.table)} partition {self.partition}"
        if self.success:
            head = f"{label}: {self.row_count} rows pass the contract"
            return (
                head
                + "".join(f"\n  - tolerated: {f.describe()}" for f in self.tolerated)
                + "".join(f"\n  - warning: {w}" for w in self.warnings)
            )
        limit = (
            f"; a row rule may break on at most {_percent(self.max_bad_fraction)} of rows"
            if self.max_bad_fraction is not None
            else ""
        )
        n = len(self.blocking)
        lines = [
            f"{label} failed {n} data-quality rule{'s' if n != 1 else ''} ({self.row_count} rows{limit}):"
        ]
        lines += [f"  - {label}: {f.describe()}" for f in self.blocking]
        if self.tolerated:
            lines.append("  within the tolerated share:")
            lines += [f"  - {label}: {f.describe()}" for f in self.tolerated]
        lines += [f"  - warning: {w}" for w in self.warnings]
        advice = _ADVICE.get(self.table)
        if advice:
            lines.append(advice)
        return "\n".join(lines)

    def raise_for_failures(self) -> QualityReport:
        """Raise DataQualityError when the table fails; return the report otherwise."""
        if not self.success:
            raise DataQualityError(self)
        return self

    def summary(self) -> dict[str, Any]:
        """Small JSON-able dict for XCom: counts only, no sample values."""
        return {
            "table": self.table,
            "partition": self.partition,
            "success": self.success,
            "checked_rows": int(self.row_count),
            "failed_rules": len(self.blocking),
            "tolerated_rules": len(self.tolerated),
            "bad_rows": {f"{f.column or 'table'}:{f.rule}": int(f.unexpected_count) for f in self.failures},
            "extra_columns": list(self.extra_columns),
            "warnings": list(self.warnings),
            **({"drift": dict(self.drift)} if self.drift else {}),  # raw events with trailing nights only
        }


def check_raw_partition(cfg: Config, run_date: str) -> QualityReport:
    """Read the run date's raw events partition and the catalogue, check them; raise on a broken contract.

    A missing partition or catalogue raises ``MissingInput``; a partition without rows raises
    ``EmptyInput`` when ``quality.empty_partition`` is ``fail`` and adds a warning to the report when
    it is ``warn``. All are bad input (``dql_model.errors``): the DAG does not retry them.
    """
    from dql_model.warehouse import storage

    partition = f"{schema.EVENT_DATE}={run_date}"
    folder = cfg.layout.partition(schema.EVENTS, run_date)
    try:
        table = storage.read_partition(folder)
    except FileNotFoundError:
        from dql_model.warehouse.run_dates import loaded_event_dates, missing_run_date_message

        raise MissingInput(
            missing_run_date_message(cfg.layout.table(schema.EVENTS), run_date, loaded_event_dates(cfg))
        ) from None
    events = table.to_pandas()
    policy = cfg.quality.empty_partition
    if events.empty and policy == "fail":
        raise EmptyInput(
            f"raw events partition {partition} ({folder}) has no rows, and quality.empty_partition is "
            f"'fail' (DQLREC_QUALITY__EMPTY_PARTITION): the night would train and score on the earlier "
            "days' events only. Load the day's events and rerun the date, or set quality.empty_partition "
            "to 'warn' to run on the earlier days."
        )
    catalogue = cfg.layout.table(schema.ITEMS)
    try:
        items = storage.read_partition(catalogue, columns=[schema.ITEM_ID])
    except FileNotFoundError:
        raise MissingInput(
            f"the item catalogue {catalogue} is missing: load the items table (or `dqlrec generate` for "
            "the demo) and rerun the date."
        ) from None
    report = validate_raw_events(
        events,
        partition=partition,
        known_item_ids=items.column(schema.ITEM_ID),
        max_bad_fraction=cfg.quality.max_bad_fraction,
        lookback_days=cfg.etl.lookback_days,
        docs_dir=cfg.layout.data_docs(),
    )
    if events.empty:
        report.warnings.append(
            f"partition {partition} has no rows; quality.empty_partition is '{policy}', so the night "
            "runs on the earlier days' events only"
        )
    if cfg.quality.drift_nights and not events.empty:
        add_drift(report, input_drift(table, trailing_events(cfg, run_date), cfg.quality))
    return report.raise_for_failures()


TRAINING_COUNTS = ("accepted", "transitions_train", "transitions_validation", "users", "items")
"""The ETL counts that must be positive for a night to train, evaluate and score."""


def check_training_counts(counts: dict[str, Any], *, where: str) -> dict[str, int]:
    """The ETL job's accounting: input = accepted + quarantined, and something to learn from.

    ``counts`` is the job summary's ``counts``; ``where`` names it in errors. Returns the
    TRAINING_COUNTS.
    """
    quarantined = sum(counts["quarantined"].values())
    if counts["input_events"] != counts["accepted"] + quarantined:
        raise ValueError(
            f"{where}: input events {counts['input_events']} != accepted {counts['accepted']} "
            f"+ quarantined {quarantined}; rows were lost between raw and curated tables"
        )
    for key in TRAINING_COUNTS[1:]:
        if counts.get(key, 0) <= 0:
            raise ValueError(f"{where}: {key} is {counts.get(key)}; nothing to train, evaluate or score")
    return {key: counts[key] for key in TRAINING_COUNTS}


def validate_raw_events(
    df: pd.DataFrame,
    *,
    partition: str,
    known_item_ids: pa.Array | pa.ChunkedArray | Iterable[str] | None = None,
    max_bad_fraction: float,
    lookback_days: int | None = None,
    docs_dir: str | None = None,
) -> QualityReport:
    """Check one raw events partition against the events contract.

    Schema failures (a missing column, a column of the wrong type) always fail. The row rules are
    ``dql_model.contract.rules.RAW_ROW_RULES``, the table the Spark job quarantines by; each fails only when
    it breaks on more than ``max_bad_fraction`` of rows. ``unknown_item`` is checked when
    ``known_item_ids`` (the catalogue's ids: an Arrow array, or any iterable) is given, by a hash
    lookup rather than as a GX value set (see ``_unknown_item_failures``); ``event_time_out_of_range`` when ``partition`` names its day
    (``event_date=YYYY-MM-DD``): events at or after the day's end, or more than ``lookback_days``
    before its start. Columns outside the contract fail nothing; the report names them
    (``extra_columns``, a warning). ``docs_dir``: also write the Data Docs of the check there.
    """
    contract = schema.arrow_schema(schema.EVENTS)
    failures = _type_failures(df, contract, partition)
    mistyped = {f.column for f in failures}
    present = set(df.columns)
    # The partition column may come along when the table was read as a Hive dataset.
    extra = tuple(sorted(str(c) for c in present - set(contract.names) - {schema.EVENT_DATE}))
    import great_expectations.expectations as gxe

    checks = _raw_row_checks(
        present,
        partition=partition,
        lookback_days=lookback_days,
        mistyped=mistyped,
    )
    expectations: list[Expectation] = [gxe.ExpectColumnToExist(column=name) for name in contract.names]
    expectations += [e for rule_checks in checks.values() for e in rule_checks]
    owner = {(e.expectation_type, getattr(e, "column", None)): name for name, found in checks.items() for e in found}
    failures += [
        dataclasses.replace(f, contract_rule=owner.get((f.rule, f.column), ""))
        for f in _run(df, expectations, partition, suite=schema.EVENTS, docs_dir=docs_dir)
    ]
    failures += _unknown_item_failures(df, known_item_ids, partition, mistyped=mistyped)
    failures += _duplicate_failures(df, partition)
    # Row counts within the limit are tolerated (those rows go to quarantine); schema failures
    # and rules that could not be evaluated carry a detail instead of a count and always block.
    failures = [
        dataclasses.replace(f, blocking=False) if not f.detail and f.fraction <= max_bad_fraction else f
        for f in failures
    ]
    warnings = (
        [f"column(s) {list(extra)} are not in the events contract; the pipeline does not read them"]
        if extra
        else []
    )
    return QualityReport(
        table=schema.EVENTS,
        partition=partition,
        row_count=len(df),
        failures=_ordered(failures),
        max_bad_fraction=max_bad_fraction,
        extra_columns=extra,
        warnings=warnings,
    )


DUPLICATE_RULE = "expect_rows_to_be_unique"
"""How a failure of the duplicate rule is named (counted with pandas: the copies after the first)."""


@dataclass(frozen=True)
class _RawFrame:
    """What the raw row checks need to know about the partition being checked."""

    present: set[str]
    mistyped: set[str | None]
    day: date | None
    lookback_days: int | None


def _null_id(frame: _RawFrame) -> list[Expectation]:
    import great_expectations.expectations as gxe

    checks: list[Expectation] = []
    for column in (schema.USER_ID, schema.ITEM_ID, schema.EVENT_TIME):
        if column in frame.present:
            checks.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in (schema.USER_ID, schema.ITEM_ID):
        if column in frame.present:  # build_training_data treats a blank id as a null one
            checks.append(gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=BLANK))
    return checks


def _bad_event_type(frame: _RawFrame) -> list[Expectation]:
    import great_expectations.expectations as gxe

    if schema.EVENT_TYPE not in frame.present:
        return []
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=schema.EVENT_TYPE),
        gxe.ExpectColumnValuesToBeInSet(column=schema.EVENT_TYPE, value_set=list(schema.EVENT_TYPES)),
    ]


def _bad_value(frame: _RawFrame) -> list[Expectation]:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    if not {schema.EVENT_TYPE, schema.VALUE} <= frame.present:
        return []
    is_rating = Column(schema.EVENT_TYPE) == schema.RATING
    low, high = schema.RATING_BOUNDS
    return [
        gxe.ExpectColumnValuesToBeBetween(column=schema.VALUE, min_value=low, max_value=high, row_condition=is_rating),
        gxe.ExpectColumnValuesToNotBeNull(column=schema.VALUE, row_condition=is_rating),
    ]


def _time_out_of_range(frame: _RawFrame) -> list[Expectation]:
    """Not checked on an event_time of the wrong type (its schema failure says it all)."""
    import great_expectations.expectations as gxe

    if frame.day is None or schema.EVENT_TIME not in frame.present - frame.mistyped:
        return []
    start = datetime.combine(frame.day, time(0), tzinfo=UTC)
    earliest = start - timedelta(days=frame.lookback_days) if frame.lookback_days is not None else None
    # strict_max: the day's end is the next day's first instant.
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column=schema.EVENT_TIME, min_value=earliest, max_value=start + timedelta(days=1), strict_max=True
        )
    ]


_GX_CHECKS = {
    schema.RULE_NULL_ID: _null_id,
    schema.RULE_BAD_EVENT_TYPE: _bad_event_type,
    schema.RULE_BAD_VALUE: _bad_value,
    schema.RULE_TIME_OUT_OF_RANGE: _time_out_of_range,
}
"""Rule (dql_model.contract.rules) -> its expectations; ``unknown_item`` and ``duplicate`` are counted apart
(``_unknown_item_failures``, ``_duplicate_failures``)."""
GX_RULES = (*_GX_CHECKS, schema.RULE_UNKNOWN_ITEM, schema.RULE_DUPLICATE)
"""The row rules the raw gate checks (a test checks they are exactly dql_model.contract.rules' table)."""


def _raw_row_checks(
    present: set[str],
    *,
    partition: str,
    lookback_days: int | None,
    mistyped: set[str | None],
) -> dict[str, list[Expectation]]:
    """Rule name -> the expectations that check it on this partition."""
    frame = _RawFrame(present, mistyped, _partition_day(partition), lookback_days)
    return {name: check(frame) for name, check in _GX_CHECKS.items()}


def _partition_day(partition: str) -> date | None:
    """The day of an ``event_date=YYYY-MM-DD`` partition name; None for any other name."""
    column, _, value = partition.partition("=")
    if column != schema.EVENT_DATE:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


IN_SET_RULE = "expect_column_values_to_be_in_set"
"""How a failure of the unknown-item rule is named (the expectation it replaces; counted with pyarrow)."""


def _unknown_item_failures(
    df: pd.DataFrame, known_item_ids: Any, partition: str, *, mistyped: set[str | None]
) -> list[RuleFailure]:
    """Events whose item is not in the catalogue, as ``ExpectColumnValuesToBeInSet`` counts them (null ids
    are not counted; the null-id rule has them), found by ``pc.is_in``: a hash lookup of the partition's
    ids in the catalogue's. Handing GX a value set of every catalogue id (417k at RetailRocket's size) built
    a Python set and list of them and wrote them into the suite and its Data Docs on every night."""
    if known_item_ids is None or schema.ITEM_ID not in df.columns or schema.ITEM_ID in mistyped:
        return []
    if isinstance(known_item_ids, pa.ChunkedArray):
        known = known_item_ids.combine_chunks()
    elif isinstance(known_item_ids, pa.Array):
        known = known_item_ids
    else:
        known = pa.array(list(known_item_ids), pa.string())
    try:
        items = pc.cast(pa.array(df[schema.ITEM_ID], from_pandas=True), pa.string())
        unknown = pc.and_(pc.is_valid(items), pc.invert(pc.is_in(items, value_set=pc.cast(known, pa.string()))))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        detail = f"could not be evaluated: {error}"
        return [RuleFailure(partition, schema.ITEM_ID, IN_SET_RULE, 0, len(df), detail=detail,
                            contract_rule=schema.RULE_UNKNOWN_ITEM)]  # fmt: skip
    n = int(pc.sum(unknown).as_py() or 0)
    if not n:
        return []
    # Samples as GX picks them: the most frequent among the first unexpected values (20, in row order).
    first = pc.value_counts(items.filter(unknown).slice(0, RESULT_FORMAT["partial_unexpected_count"]))
    by_count = np.argsort(-np.asarray(first.field("counts")), kind="stable")
    samples = tuple(first.field("values").take(pa.array(by_count)).to_pylist()[:SAMPLE_SIZE])
    return [
        RuleFailure(
            partition, schema.ITEM_ID, IN_SET_RULE, n, len(df), samples=samples, contract_rule=schema.RULE_UNKNOWN_ITEM
        )
    ]


def _duplicate_failures(df: pd.DataFrame, partition: str) -> list[RuleFailure]:
    """Exact copies of an earlier row of the partition (all event columns equal, nulls equal).

    Counted over every row, as the other rules are; the Spark job quarantines only copies of a row
    that passed the other rules, so this count can exceed its by rows that break two rules.
    """
    columns = list(rules.rule(schema.RULE_DUPLICATE).columns)
    if not set(columns) <= set(df.columns) or df.empty:
        return []
    copies = df.duplicated(subset=columns, keep="first")
    n = int(copies.sum())
    if not n:
        return []
    samples = tuple(dict.fromkeys(df.loc[copies, schema.USER_ID].map(_plain)))[:SAMPLE_SIZE]
    return [
        RuleFailure(
            partition, ", ".join(columns), DUPLICATE_RULE, n, len(df), samples=samples, contract_rule=schema.RULE_DUPLICATE
        )
    ]


def validate_recommendations(
    df: pd.DataFrame, *, top_k: int, run_date: str, docs_dir: str | None = None
) -> QualityReport:
    """Check a run's recommendations against the output contract; any broken rule fails.

    ``docs_dir``: also write the Data Docs of the check there.
    """
    import great_expectations.expectations as gxe

    partition = f"{schema.RUN_DATE}={run_date}"
    contract = schema.arrow_schema(schema.RECOMMENDATIONS)
    failures = _type_failures(df, contract, partition)
    present = set(df.columns)
    allowed = set(contract.names) | {schema.RUN_DATE}
    unexpected = sorted(str(c) for c in present - allowed)
    if unexpected:
        failures.append(
            RuleFailure(
                partition,
                ", ".join(unexpected),
                "expect_table_columns_to_match_set",
                0,
                len(df),
                detail=f"columns not in the contract (expected {list(contract.names)})",
            )
        )

    expectations: list[Expectation] = [gxe.ExpectColumnToExist(column=name) for name in contract.names]
    expectations.append(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(column=name) for name in contract.names if name in present
    ]
    if schema.RANK in present:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(column=schema.RANK, min_value=1, max_value=top_k)
        )
    for pair in ((schema.USER_ID, schema.RANK), (schema.USER_ID, schema.ITEM_ID)):
        if set(pair) <= present:
            expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(pair)))
    if schema.SOURCE in present:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column=schema.SOURCE, value_set=list(schema.SOURCES))
        )
    if schema.PROPENSITY in present:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=schema.PROPENSITY, min_value=0, max_value=1, strict_min=True
            )
        )
    if schema.RUN_DATE in present:
        # The partition column may come along when the table was read as a Hive dataset.
        df = df.assign(**{schema.RUN_DATE: df[schema.RUN_DATE].astype(str)})
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=schema.RUN_DATE, value_set=[run_date]))

    failures += _run(df, expectations, partition, suite=schema.RECOMMENDATIONS, docs_dir=docs_dir)
    return QualityReport(
        table=schema.RECOMMENDATIONS, partition=partition, row_count=len(df), failures=_ordered(failures)
    )


SHARE_ROWS = 1_000_000
"""Most rows ``validate_recommendations_by_share`` hands Great Expectations at once. Its pandas checks
copy the frame a dozen times over object columns of ids and slow down per row as the frame outgrows
the caches: at RetailRocket's size 8.3 M rows in one frame took 5 to 6 times as long as 2.5 M (3.3
times the rows), in shares 3.7 times; a process validating the 8.3 M rows peaked at 2.8 GiB in one
frame, 1.6 GiB in shares."""


def validate_recommendations_by_share(
    table: pa.Table, *, top_k: int, run_date: str, docs_dir: str | None = None, share_rows: int = SHARE_ROWS
) -> QualityReport:
    """``validate_recommendations`` over a whole run's table, in shares of at most about ``share_rows``
    rows split by user, so the time grows linearly with the rows and the memory stays bounded.

    Every row of a user (and every row without one) lands in the same share, so the per-user
    uniqueness rules see all of that user's rows; a rule broken in several shares is one failure,
    its rows summed over them. ``docs_dir`` gets the first share's Data Docs page.
    """
    shares = max(1, -(-table.num_rows // max(share_rows, 1)))
    if shares == 1 or schema.USER_ID not in table.column_names:
        return validate_recommendations(table.to_pandas(), top_k=top_k, run_date=run_date, docs_dir=docs_dir)
    users = pc.dictionary_encode(table.column(schema.USER_ID)).combine_chunks().indices  # in order of first row
    share_of = pc.fill_null(users, 0).to_numpy(zero_copy_only=False) % shares
    reports = []
    for share in range(shares):
        # A boolean filter per share: at 8.3 M rows the nine filters copy the ids in a third of the
        # time one take of the whole table in share order does.
        rows = table.filter(pa.array(share_of == share))
        if rows.num_rows:
            reports.append(
                validate_recommendations(
                    rows.to_pandas(), top_k=top_k, run_date=run_date, docs_dir=docs_dir if share == 0 else None
                )
            )
    return _merged(reports, table.num_rows)


def _merged(reports: list[QualityReport], row_count: int) -> QualityReport:
    """One report of a table checked in shares: a rule broken in several counts its rows once each."""
    merged: dict[tuple[Any, ...], RuleFailure] = {}
    for report in reports:
        for failure in report.failures:
            key = (failure.column, failure.rule, failure.detail, failure.blocking)
            seen = merged.get(key)
            if seen is None:
                merged[key] = dataclasses.replace(failure, row_count=row_count)
                continue
            samples = tuple(dict.fromkeys(seen.samples + failure.samples))[:SAMPLE_SIZE]
            merged[key] = dataclasses.replace(
                seen, unexpected_count=seen.unexpected_count + failure.unexpected_count, samples=samples
            )
    first = reports[0]
    return dataclasses.replace(first, row_count=row_count, failures=_ordered(list(merged.values())))


# --- input volume and drift: the run date's events against the trailing nights (pyarrow) --------

VOLUME, MIX, NEW_ITEMS, NEW_USERS = "input_volume", "event_type_mix", "new_item_share", "new_user_share"
"""The drift figures, named as their failures' rules are."""
OK, WARN, FAIL = "ok", "warn", "fail"
DRIFT_COLUMNS = (schema.USER_ID, schema.ITEM_ID, schema.EVENT_TYPE)
"""What the drift check reads of each trailing night."""


@dataclass(frozen=True)
class DriftFigure:
    """One figure of the run date's events against the trailing nights, and how far off it is."""

    name: str
    """VOLUME, MIX, NEW_ITEMS or NEW_USERS."""
    value: float
    """Tonight's figure: events, the mix's distance from the trailing mix, a share of new ids."""
    trailing_mean: float
    """The same figure's mean over the trailing nights (MIX: 0, the trailing mix itself)."""
    deviation: float
    """What the thresholds judge: VOLUME |value / mean - 1|, MIX the distance, NEW_* value - mean."""
    warn: float
    fail: float
    setting: str
    """The config fields of the thresholds, e.g. ``quality.volume``."""
    nights: int
    """Trailing nights behind the mean."""
    detail: str = ""
    """What the figure is made of (MIX: each event type's share tonight and over the trailing nights)."""

    @property
    def level(self) -> str:
        return FAIL if self.deviation > self.fail else WARN if self.deviation > self.warn else OK

    def describe(self, partition: str) -> str:
        threshold = self.fail if self.level == FAIL else self.warn
        kind = "fail" if self.level == FAIL else "warn"
        if self.name == VOLUME:
            direction = "fewer" if self.value < self.trailing_mean else "more"
            figure = (
                f"{self.value:.0f} events against a trailing mean of {self.trailing_mean:.0f} over {self.nights} "
                f"nights: {_percent(self.deviation)} {direction}"
            )
        elif self.name == MIX:
            figure = f"event-type mix {self.detail}; distance {self.deviation:.3f} from the trailing {self.nights} nights' mix"
        else:
            what = "items" if self.name == NEW_ITEMS else "users"
            figure = (
                f"{_percent(self.value)} of the day's {what} are new against a trailing mean of "
                f"{_percent(self.trailing_mean)} over {self.nights} nights (+{self.deviation:.3f})"
            )
        return (
            f"partition {partition}: {figure}, beyond the {kind} threshold {threshold:g} ({self.setting}_{kind})"
        )


def trailing_events(cfg: Config, run_date: str) -> list[pa.Table]:
    """The raw events of the ``quality.drift_nights`` days before ``run_date`` that are loaded, oldest first
    (``DRIFT_COLUMNS`` only); a night missing or unreadable is left out."""
    from dql_model.warehouse import storage

    day = date.fromisoformat(run_date)
    nights = []
    for back in range(cfg.quality.drift_nights, 0, -1):
        folder = cfg.layout.partition(schema.EVENTS, (day - timedelta(days=back)).isoformat())
        try:
            nights.append(storage.read_partition(folder, columns=list(DRIFT_COLUMNS)))
        except (FileNotFoundError, pa.ArrowInvalid, KeyError, ValueError) as error:
            if Path(folder).is_dir():
                log.warning("drift check: trailing partition %s left out (%s)", folder, error)
    return nights


def input_drift(today: pa.Table, trailing: list[pa.Table], thresholds: Any) -> list[DriftFigure]:
    """Tonight's events against the trailing nights (oldest first): volume, event-type mix, new items, new users.

    ``thresholds`` is ``cfg.quality``. Computed with pyarrow kernels (counts, group-bys), no Python loop
    over rows. A new item (user) is one not seen on an earlier night of the window, so the new shares
    need two trailing nights (the first one is their history only); without a trailing night nothing is
    judged. Tonight's rows with a null id or type are the row rules' business and are left out here.

    Limits: an earlier night's share is measured against a shorter history than tonight's, so the trailing
    mean of the new shares runs high and the check is lenient: it is meant for surges (ids that changed
    format, a feed from another shop), not for a slow drift. Cost: two group-bys over the window's ids,
    about 0.55 M rows/s on one core (8 nights of 1.1 M events: 16 s; ``python -m benchmarks.bench_ops``).
    """
    q = thresholds
    trailing = [t for t in trailing if t.num_rows]
    if not trailing or not set(DRIFT_COLUMNS) <= set(today.column_names):
        return []
    nights = len(trailing)
    figures = []
    counts = [t.num_rows for t in trailing]
    mean = sum(counts) / nights
    figures.append(
        DriftFigure(VOLUME, float(today.num_rows), mean, abs(today.num_rows / mean - 1), q.volume_warn,
                    q.volume_fail, "quality.volume", nights)
    )  # fmt: skip
    figures.append(_mix_figure(today, trailing, q))
    if nights >= 2:
        for name, column in ((NEW_ITEMS, schema.ITEM_ID), (NEW_USERS, schema.USER_ID)):
            shares = _new_shares([t.column(column) for t in [*trailing, today]])
            history = shares[:-1]
            past = sum(history) / len(history)
            figures.append(
                DriftFigure(name, shares[-1], past, shares[-1] - past, q.new_share_warn, q.new_share_fail,
                            "quality.new_share", len(history))
            )  # fmt: skip
    return figures


def _type_shares(column: pa.ChunkedArray) -> dict[str, float]:
    counts = pc.value_counts(pc.drop_null(column.cast(pa.string())))
    values, n = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    total = sum(n)
    return {v: c / total for v, c in zip(values, n, strict=True)} if total else {}


def _mix_figure(today: pa.Table, trailing: list[pa.Table], q: Any) -> DriftFigure:
    """Total variation distance between tonight's event-type shares and the trailing nights' pooled shares."""
    now = _type_shares(today.column(schema.EVENT_TYPE))
    before = _type_shares(_strings([t.column(schema.EVENT_TYPE) for t in trailing]))
    types = sorted(set(now) | set(before))
    distance = 0.5 * sum(abs(now.get(t, 0.0) - before.get(t, 0.0)) for t in types)
    detail = ", ".join(f"{t} {_percent(now.get(t, 0.0))} (trailing {_percent(before.get(t, 0.0))})" for t in types)
    return DriftFigure(MIX, distance, 0.0, distance, q.mix_warn, q.mix_fail, "quality.mix", len(trailing), detail)


def _new_shares(nights: list[pa.ChunkedArray]) -> list[float]:
    """For each night after the first, the share of its distinct ids not seen on an earlier night."""
    ids = _strings(nights)
    night = pa.chunked_array([np.full(len(n), i, dtype=np.int32) for i, n in enumerate(nights)], type=pa.int32())
    pairs = pa.table({"id": ids, "night": night}).filter(pc.is_valid(ids)).group_by(["id", "night"]).aggregate([])
    distinct = _count_by(pairs, "night")  # distinct ids of each night
    new = _count_by(pairs.group_by("id").aggregate([("night", "min")]), "night_min")  # ids by their first night
    return [new.get(i, 0) / distinct[i] if distinct.get(i) else 0.0 for i in range(1, len(nights))]


def _strings(columns: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    """Several string columns (string, large_string or dictionary-encoded) as one string column."""
    return pa.chunked_array([chunk for column in columns for chunk in column.cast(pa.string()).chunks], type=pa.string())


def _count_by(table: pa.Table, key: str) -> dict[int, int]:
    """Rows of ``table`` per value of its integer column ``key`` (a handful of nights: a small dict)."""
    counted = table.group_by(key).aggregate([([], "count_all")])
    return dict(zip(counted.column(key).to_pylist(), counted.column("count_all").to_pylist(), strict=True))


def add_drift(report: QualityReport, figures: list[DriftFigure]) -> QualityReport:
    """Put the drift figures into the raw gate's report: each as a figure, a warning, or a blocking failure."""
    columns = {VOLUME: None, MIX: schema.EVENT_TYPE, NEW_ITEMS: schema.ITEM_ID, NEW_USERS: schema.USER_ID}
    for figure in figures:
        report.drift[figure.name] = {
            "value": figure.value, "trailing_mean": figure.trailing_mean, "deviation": figure.deviation,
            "nights": figure.nights, "level": figure.level,
        }  # fmt: skip
        if figure.level == WARN:
            report.warnings.append(figure.describe(report.partition))
        elif figure.level == FAIL:
            report.failures.insert(
                0,
                RuleFailure(
                    report.partition, columns[figure.name], figure.name, 0, report.row_count,
                    detail=figure.describe(report.partition) + ". If the change is real (a sale, a new catalogue), "
                    f"raise {figure.setting}_fail (DQLREC_{figure.setting.upper().replace('.', '__')}_FAIL) and rerun the date",
                ),
            )  # fmt: skip
    return report


# --- Great Expectations plumbing ----------------------------------------------------------------


@functools.cache
def _batch_definition() -> BatchDefinition:
    """The process-wide ephemeral context's whole-DataFrame batch definition (built once: GX is slow)."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return (
        context.data_sources.add_pandas("dqlrec")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("whole_frame")
    )


RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}


def _run(
    df: pd.DataFrame, expectations: list[Expectation], partition: str, *, suite: str, docs_dir: str | None = None
) -> list[RuleFailure]:
    """Validate ``df`` against ``expectations``; one RuleFailure per broken expectation.

    With ``docs_dir`` the validation runs as a GX checkpoint whose UpdateDataDocsAction renders it
    into the Data Docs site there (``index.html``, one page per validation, the earlier validations'
    pages kept: see ``_docs_batch_definition``); a site that cannot be written is a warning, never a
    failed check.
    """
    import great_expectations as gx

    batch_definition = _batch_definition()
    outcome = None
    if docs_dir:
        try:
            outcome = _validate_into_docs(df, expectations, f"dqlrec_{suite}", partition, docs_dir)
        except Exception as error:  # the docs are a report; the check itself must still run
            log.warning("Data Docs not written to %s (%r); validating without them", docs_dir, error)
    if outcome is None:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})  # also makes the context current
        checks = gx.ExpectationSuite(name="dqlrec_checks")
        for expectation in expectations:
            checks.add_expectation(expectation)
        outcome = batch.validate(checks, result_format=RESULT_FORMAT)
    failures = []
    for result in outcome.results:
        if result.success:
            continue
        config = result.expectation_config
        kwargs = config.kwargs
        column = kwargs.get("column") or ", ".join(kwargs.get("column_list") or []) or None
        details = result.result or {}
        error = _exception_message(result.exception_info)
        if error:
            detail = f"could not be evaluated: {error}"
        elif config.type == EXPECT_COLUMN_TO_EXIST:
            detail = "column missing (schema failure)"
        elif "unexpected_count" not in details:
            detail = f"observed {details.get('observed_value')!r}"
        else:
            detail = ""
        failures.append(
            RuleFailure(
                partition=partition,
                column=column,
                rule=config.type,
                unexpected_count=int(details.get("unexpected_count") or 0),
                row_count=len(df),
                samples=_samples(details),
                detail=detail,
            )
        )
    return failures


def _validate_into_docs(df: pd.DataFrame, expectations: list[Expectation], suite_name: str, partition: str, docs_dir: str):
    """Run the expectations as a checkpoint that adds its page to the Data Docs site in ``docs_dir``; its result.

    The validation is named after ``partition`` (the run name the site's index shows)."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier

    batch_definition = _docs_batch_definition(str(Path(docs_dir).resolve()))
    context = batch_definition.data_asset.datasource.data_context
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{suite_name} {partition}", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{suite_name} {partition}",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format=RESULT_FORMAT,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=partition))
    (outcome,) = result.run_results.values()
    return outcome


DOCS_SITE = "dqlrec"
"""The name of the Data Docs site inside its context (one context per site folder)."""


@functools.cache
def _docs_batch_definition(folder: str) -> BatchDefinition:
    """A whole-DataFrame batch definition in a context of its own whose Data Docs site is ``folder``.

    The site is cumulative: every night's validations land in it and its index lists them all. GX lists
    a validation page in the index only while the context's validation results store still holds the
    result (it removes the others), so the results and suites are kept on disk in ``folder/_store``
    (layout.DATA_DOCS_STORE), not in memory: a later night's process finds the earlier nights' results
    there. Retention removes the oldest nights' pages and results (retention.report_nights).
    Built once per folder and process (GX is slow to set up)."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    config = DataContextConfig(store_backend_defaults=defaults)
    for store in (defaults.expectations_store_name, defaults.validation_results_store_name):
        config.stores[store]["store_backend"] = {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(Path(folder) / DATA_DOCS_STORE / store),
        }
    config.data_docs_sites = {
        DOCS_SITE: {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": folder},
        }
    }
    context = gx.get_context(project_config=config, mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return (
        context.data_sources.add_pandas("dqlrec")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("whole_frame")
    )


def _exception_message(info: Any) -> str:
    """GX reports exceptions either flat or keyed by metric; return the first message, if any."""
    if not isinstance(info, dict):
        return ""
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "unknown error")
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message") or "unknown error")
    return ""


def _samples(details: dict[str, Any]) -> tuple[Any, ...]:
    counts = details.get("partial_unexpected_counts") or []
    values = [c["value"] for c in counts] or list(details.get("partial_unexpected_list") or [])
    out: list[Any] = []
    for value in values:
        value = _plain(value)
        if value not in out:
            out.append(value)
        if len(out) == SAMPLE_SIZE:
            break
    return tuple(out)


def _plain(value: Any) -> Any:
    """numpy/pandas scalars -> Python scalars, so samples print and compare simply."""
    if isinstance(value, tuple | list):
        return tuple(_plain(v) for v in value)
    if value is None or (not isinstance(value, str | bytes) and pd.isna(value) is True):
        return None
    return value.item() if hasattr(value, "item") else value


# --- column types (pandas/pyarrow; see the module docstring) ------------------------------------


def _type_failures(df: pd.DataFrame, contract: pa.Schema, partition: str) -> list[RuleFailure]:
    failures = []
    for contract_field in contract:
        if contract_field.name not in df.columns:
            continue  # reported by expect_column_to_exist
        found = _type_mismatch(df[contract_field.name], contract_field.type)
        if found:
            failures.append(
                RuleFailure(
                    partition,
                    contract_field.name,
                    EXPECT_COLUMN_TYPE,
                    0,
                    len(df),
                    detail=f"expected {contract_field.type} (contract), found {found} (schema failure)",
                )
            )
    return failures


def _type_mismatch(series: pd.Series, expected: pa.DataType) -> str | None:
    """None when the column's values fit the contract type; otherwise what the column holds.

    Judged on the values pandas infers rather than the dtype alone: a frame built by hand holds
    floats in an object column, one converted from Arrow a float64 column; both are fine.
    """
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    if inferred == "empty":
        return None  # all values missing: the not-null rules speak for those columns
    if pa.types.is_string(expected) or pa.types.is_large_string(expected):
        accepted = {"string"}
    elif pa.types.is_integer(expected):
        accepted = {"integer"}
    elif pa.types.is_floating(expected):
        accepted = {"floating", "integer", "mixed-integer-float"}
    elif pa.types.is_timestamp(expected):
        accepted = {"datetime64", "datetime"}
    elif pa.types.is_boolean(expected):
        accepted = {"boolean"}
    else:
        return None
    return None if inferred in accepted else f"{series.dtype} holding {inferred} values"


def _ordered(failures: list[RuleFailure]) -> list[RuleFailure]:
    """Blocking first, then by how many rows; schema failures (no count) lead."""
    return sorted(
        failures, key=lambda f: (not f.blocking, not f.detail, -f.unexpected_count, f.column or "", f.rule)
    )


def _percent(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    if 0 < fraction < 0.0001:
        return "<0.01%"
    return f"{100 * fraction:.2f}%"
