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
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from dql_model import schema
from dql_model.errors import EmptyInput, InputError, MissingInput

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.expectations.expectation import Expectation

    from dql_model.config import Config

"""A rating's value lies in schema.RATING_BOUNDS, [0.5, 5] (see EtlConfig.reward_rating_scale)."""
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
        }


def check_raw_partition(cfg: Config, run_date: str) -> QualityReport:
    """Read the run date's raw events partition and the catalogue, check them; raise on a broken contract.

    A missing partition or catalogue raises ``MissingInput``; a partition without rows raises
    ``EmptyInput`` when ``quality.empty_partition`` is ``fail`` and adds a warning to the report when
    it is ``warn``. All are bad input (``dql_model.errors``): the DAG does not retry them.
    """
    from dql_model import storage

    partition = f"{schema.EVENT_DATE}={run_date}"
    folder = cfg.layout.partition(schema.EVENTS, run_date)
    try:
        events = storage.read_partition(folder).to_pandas()
    except FileNotFoundError:
        from dql_model.run_dates import loaded_event_dates, missing_run_date_message

        raise MissingInput(
            missing_run_date_message(cfg.layout.table(schema.EVENTS), run_date, loaded_event_dates(cfg))
        ) from None
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
        known_item_ids=set(items.column(schema.ITEM_ID).to_pylist()),
        max_bad_fraction=cfg.quality.max_bad_fraction,
    )
    if events.empty:
        report.warnings.append(
            f"partition {partition} has no rows; quality.empty_partition is '{policy}', so the night "
            "runs on the earlier days' events only"
        )
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
    known_item_ids: Iterable[str] | None = None,
    max_bad_fraction: float,
) -> QualityReport:
    """Check one raw events partition against the events contract.

    Schema failures (a missing column, a column of the wrong type) always fail. Row rules (ids and
    event time not null, known event type, rating in bounds, item in the catalogue when
    ``known_item_ids`` is given) fail only when they break on more than ``max_bad_fraction`` of rows.
    Columns outside the contract fail nothing; the report names them (``extra_columns``, a warning).
    """
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    contract = schema.arrow_schema(schema.EVENTS)
    failures = _type_failures(df, contract, partition)
    present = set(df.columns)
    # The partition column may come along when the table was read as a Hive dataset.
    extra = tuple(sorted(str(c) for c in present - set(contract.names) - {schema.EVENT_DATE}))
    expectations: list[Expectation] = [gxe.ExpectColumnToExist(column=name) for name in contract.names]
    for column in (schema.USER_ID, schema.ITEM_ID, schema.EVENT_TIME, schema.EVENT_TYPE):
        if column in present:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in (schema.USER_ID, schema.ITEM_ID):
        if column in present:  # build_training_data treats a blank id as a null one (rule null_id)
            expectations.append(gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=BLANK))
    if schema.EVENT_TYPE in present:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column=schema.EVENT_TYPE, value_set=list(schema.EVENT_TYPES))
        )
        if schema.VALUE in present:
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=schema.VALUE,
                    min_value=schema.RATING_BOUNDS[0],
                    max_value=schema.RATING_BOUNDS[1],
                    row_condition=Column(schema.EVENT_TYPE) == schema.RATING,
                )
            )
    if known_item_ids is not None and schema.ITEM_ID in present:
        known = sorted({i for i in known_item_ids if i is not None})
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=schema.ITEM_ID, value_set=known))

    failures += _run(df, expectations, partition)
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


def validate_recommendations(df: pd.DataFrame, *, top_k: int, run_date: str) -> QualityReport:
    """Check a run's recommendations against the output contract; any broken rule fails."""
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

    failures += _run(df, expectations, partition)
    return QualityReport(
        table=schema.RECOMMENDATIONS, partition=partition, row_count=len(df), failures=_ordered(failures)
    )


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


def _run(df: pd.DataFrame, expectations: list[Expectation], partition: str) -> list[RuleFailure]:
    """Validate ``df`` against ``expectations``; one RuleFailure per broken expectation."""
    import great_expectations as gx

    batch = _batch_definition().get_batch(
        batch_parameters={"dataframe": df}
    )  # also makes the context current
    suite = gx.ExpectationSuite(name="dqlrec_checks")
    for expectation in expectations:
        suite.add_expectation(expectation)
    outcome = batch.validate(
        suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20}
    )
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
