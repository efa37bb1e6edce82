"""Great Expectations checks of raw events and recommendations (real GX, small inline frames)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pyarrow as pa
import pytest

from dql_model.contract import schema
from dql_model.warehouse import quality
from dql_model.warehouse.quality import DataQualityError, validate_raw_events, validate_recommendations

PARTITION = "event_date=2026-11-20"
RUN_DATE = "2026-11-27"
TOP_K = 3
NOT_NULL = "expect_column_values_to_not_be_null"
IN_SET = "expect_column_values_to_be_in_set"
BETWEEN = "expect_column_values_to_be_between"
UNIQUE = "expect_compound_columns_to_be_unique"


def raw_events(n: int = 200) -> pd.DataFrame:
    """A clean partition: every event type, ratings in bounds, a purchase amount above 5, null session ids."""
    types = list(schema.EVENT_TYPES)
    frame = pd.DataFrame(
        {
            schema.EVENT_TIME: pd.date_range("2026-11-20", periods=n, freq="min", tz="UTC"),
            schema.USER_ID: [f"u{i % 17}" for i in range(n)],
            schema.ITEM_ID: [f"i{i % 11}" for i in range(n)],
            schema.EVENT_TYPE: [types[i % 4] for i in range(n)],
            schema.VALUE: [None] * n,
            schema.SESSION_ID: [None if i % 3 else f"s{i}" for i in range(n)],
        }
    )
    frame.loc[frame[schema.EVENT_TYPE] == schema.RATING, schema.VALUE] = 4.0
    frame.loc[frame[schema.EVENT_TYPE] == schema.PURCHASE, schema.VALUE] = 129.9  # an amount, not a rating
    return frame


def only(report: quality.QualityReport) -> quality.RuleFailure:
    assert len(report.failures) == 1, report.message()
    return report.failures[0]


def test_clean_raw_partition_passes():
    report = validate_raw_events(
        raw_events(), partition=PARTITION, known_item_ids={f"i{i}" for i in range(11)}, max_bad_fraction=0.0
    )
    assert report.success, report.message()
    assert report.failures == []
    assert report.raise_for_failures() is report
    assert report.summary() == {
        "table": schema.EVENTS,
        "partition": PARTITION,
        "success": True,
        "checked_rows": 200,
        "failed_rules": 0,
        "tolerated_rules": 0,
        "bad_rows": {},
        "extra_columns": [],
        "warnings": [],
    }


def test_null_item_id_fails_with_partition_column_rule_and_count():
    events = raw_events()
    events.loc[[5, 77, 150], schema.ITEM_ID] = None
    report = validate_raw_events(events, partition=PARTITION, max_bad_fraction=0.01)

    failure = only(report)
    assert (failure.partition, failure.column, failure.rule) == (PARTITION, schema.ITEM_ID, NOT_NULL)
    assert (failure.unexpected_count, failure.row_count, failure.blocking) == (3, 200, True)
    assert failure.samples == (None,)
    with pytest.raises(DataQualityError) as caught:
        report.raise_for_failures()
    message = str(caught.value)
    assert (
        f"raw events partition {PARTITION}: column item_id, rule {NOT_NULL}: 3 of 200 rows (1.50%)" in message
    )
    assert "quarantined by build_training_data" in message
    assert caught.value.report is report


def test_bad_rows_within_the_limit_are_tolerated_but_counted():
    events = raw_events()
    events.loc[[5, 77], schema.ITEM_ID] = None  # 1.00%: at the limit, not over it
    report = validate_raw_events(events, partition=PARTITION, max_bad_fraction=0.01)

    assert report.success, report.message()
    failure = only(report)
    assert (failure.column, failure.rule, failure.unexpected_count, failure.blocking) == (
        schema.ITEM_ID,
        NOT_NULL,
        2,
        False,
    )
    assert report.summary()["bad_rows"] == {f"item_id:{NOT_NULL}": 2}
    assert report.summary()["tolerated_rules"] == 1


def test_blank_user_id_counts_like_a_null_one():
    events = raw_events()
    events.loc[[8, 9], schema.USER_ID] = ["", "  "]
    report = validate_raw_events(events, partition=PARTITION, max_bad_fraction=0.0)

    failure = only(report)
    assert (failure.column, failure.rule, failure.unexpected_count) == (
        schema.USER_ID,
        "expect_column_values_to_not_match_regex",
        2,
    )
    assert set(failure.samples) == {"", "  "}


def test_bad_event_type_is_named_with_a_sample():
    events = raw_events()
    events.loc[[3, 4, 9], schema.EVENT_TYPE] = "clik"
    report = validate_raw_events(events, partition=PARTITION, max_bad_fraction=0.0)

    failure = only(report)
    assert (failure.column, failure.rule, failure.unexpected_count) == (schema.EVENT_TYPE, IN_SET, 3)
    assert failure.samples == ("clik",)
    assert (
        "column event_type, rule expect_column_values_to_be_in_set: 3 of 200 rows (1.50%), e.g. ['clik']"
        in (report.message())
    )


def test_missing_column_always_fails_and_row_rules_still_run():
    events = raw_events().drop(columns=[schema.SESSION_ID])
    events.loc[0, schema.USER_ID] = None
    report = validate_raw_events(events, partition=PARTITION, max_bad_fraction=1.0)

    assert not report.success
    assert [(f.column, f.rule, f.blocking) for f in report.failures] == [
        (schema.SESSION_ID, "expect_column_to_exist", True),
        (schema.USER_ID, NOT_NULL, False),  # 0.5% <= 100%: tolerated, still reported
    ]
    message = report.message()
    assert (
        f"raw events partition {PARTITION}: column session_id, rule expect_column_to_exist: column missing"
        in message
    )


def test_wrong_column_type_is_a_schema_failure():
    events = raw_events()
    events[schema.EVENT_TIME] = events[schema.EVENT_TIME].astype(str)
    report = validate_raw_events(events, partition=PARTITION, max_bad_fraction=1.0)

    failure = only(report)
    assert (failure.column, failure.rule, failure.blocking) == (
        schema.EVENT_TIME,
        "expect_column_type_to_be",
        True,
    )
    assert "timestamp" in failure.detail and "string" in failure.detail


def test_rating_out_of_bounds_and_unknown_item():
    events = raw_events()
    rating_rows = events.index[events[schema.EVENT_TYPE] == schema.RATING][:2]
    events.loc[rating_rows, schema.VALUE] = [0.0, 9.0]
    events.loc[1, schema.ITEM_ID] = "ghost"
    known = {f"i{i}" for i in range(11)}
    report = validate_raw_events(events, partition=PARTITION, known_item_ids=known, max_bad_fraction=0.0)

    found = {(f.column, f.rule): (f.unexpected_count, set(f.samples)) for f in report.failures}
    assert found == {
        (schema.VALUE, BETWEEN): (2, {0.0, 9.0}),  # purchase amounts of 129.9 are not ratings
        (schema.ITEM_ID, IN_SET): (1, {"ghost"}),
    }


def test_unknown_items_are_looked_up_in_an_arrow_catalogue_as_in_a_set():
    """The gate passes the catalogue as an Arrow column (417k ids at RetailRocket's size): same count,
    samples and tolerance as a Python set; a null item id is the null-id rule's, not an unknown item."""
    events = raw_events()
    events.loc[[1, 2, 5], schema.ITEM_ID] = ["ghost", "ghost", "phantom"]
    events.loc[7, schema.ITEM_ID] = None
    known = [f"i{i}" for i in range(11)] + [f"x{i}" for i in range(200_000)]
    found = []
    for catalogue in (pa.chunked_array([known[:5], known[5:] + [None]]), set(known)):
        report = validate_raw_events(events, partition=PARTITION, known_item_ids=catalogue, max_bad_fraction=0.1)
        found.append(
            [
                (f.column, f.rule, f.unexpected_count, f.samples, f.blocking)
                for f in report.failures
                if f.contract_rule == schema.RULE_UNKNOWN_ITEM
            ]
        )
    assert found[0] == found[1] == [(schema.ITEM_ID, IN_SET, 3, ("ghost", "phantom"), False)]


# --- recommendations ------------------------------------------------------------------------------


def recommendations(n_users: int = 4) -> pd.DataFrame:
    """Clean top-3 lists, as scoring writes them (through Arrow, in the contract's types)."""
    rows = [
        {
            schema.USER_ID: f"u{u}",
            schema.RANK: rank,
            schema.ITEM_ID: f"i{(u + rank) % 7}",
            schema.SCORE: 1.0 / rank,
            schema.SOURCE: schema.SOURCE_EXPLORE if rank == TOP_K else schema.SOURCE_DQN,
            schema.PROPENSITY: 0.25 if rank == TOP_K else 1.0,
            schema.MODEL_VERSION: "v0007",
            schema.GENERATED_AT: pd.Timestamp("2026-11-27T03:00:00Z"),
        }
        for u in range(n_users)
        for rank in range(1, TOP_K + 1)
    ]
    return pa.Table.from_pylist(rows, schema=schema.arrow_schema(schema.RECOMMENDATIONS)).to_pandas()


def test_clean_recommendations_pass():
    report = validate_recommendations(recommendations(), top_k=TOP_K, run_date=RUN_DATE)
    assert report.success, report.message()
    assert report.partition == f"run_date={RUN_DATE}"
    json.dumps(report.summary())  # XCom-safe


def duplicate_rank(df):
    df.loc[1, schema.RANK] = 1  # u0 now has rank 1 twice
    return df


def rank_over_k(df):
    df.loc[2, schema.RANK] = TOP_K + 1
    return df


def bad_source(df):
    df.loc[4, schema.SOURCE] = "manual"
    return df


def zero_propensity(df):
    df.loc[5, schema.PROPENSITY] = 0.0
    return df


def null_score(df):
    df.loc[6, schema.SCORE] = None
    return df


def duplicate_item(df):
    df.loc[1, schema.ITEM_ID] = df.loc[0, schema.ITEM_ID]
    return df


@pytest.mark.parametrize(
    ("break_it", "column", "rule", "count"),
    [
        (duplicate_rank, "user_id, rank", UNIQUE, 2),
        (rank_over_k, schema.RANK, BETWEEN, 1),
        (bad_source, schema.SOURCE, IN_SET, 1),
        (zero_propensity, schema.PROPENSITY, BETWEEN, 1),
        (null_score, schema.SCORE, NOT_NULL, 1),
        (duplicate_item, "user_id, item_id", UNIQUE, 2),
    ],
)
def test_broken_recommendations_fail(break_it, column, rule, count):
    report = validate_recommendations(break_it(recommendations()), top_k=TOP_K, run_date=RUN_DATE)

    failure = only(report)
    assert (failure.column, failure.rule, failure.unexpected_count, failure.blocking) == (
        column,
        rule,
        count,
        True,
    )
    where = f"columns ({column})" if "," in column else f"column {column}"
    expected = f"recommendations partition run_date={RUN_DATE}: {where}, rule {rule}: {count} of 12 rows"
    with pytest.raises(DataQualityError, match=re.escape(expected)):
        report.raise_for_failures()


def by_share(df: pd.DataFrame, share_rows: int = 4):
    """The task's path: the table in shares of about ``share_rows`` rows (12 rows: 3 shares of users)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    return quality.validate_recommendations_by_share(table, top_k=TOP_K, run_date=RUN_DATE, share_rows=share_rows)


@pytest.mark.parametrize(
    "break_it", [duplicate_rank, rank_over_k, bad_source, zero_propensity, null_score, duplicate_item, lambda df: df]
)
def test_a_check_in_shares_finds_what_the_whole_frame_check_finds(break_it):
    whole = validate_recommendations(break_it(recommendations()), top_k=TOP_K, run_date=RUN_DATE)
    shared = by_share(break_it(recommendations()))
    assert shared.row_count == whole.row_count == 12
    assert [(f.column, f.rule, f.unexpected_count, f.row_count) for f in shared.failures] == [
        (f.column, f.rule, f.unexpected_count, f.row_count) for f in whole.failures
    ]


def test_shares_keep_each_users_rows_together_and_sum_a_rule_over_them():
    df = recommendations()
    # u0's first row again at the end: split by rows it would sit in another share than the original
    copied = pd.concat([df, df.iloc[[0]]], ignore_index=True)
    failures = by_share(copied).failures
    assert {(f.column, f.unexpected_count) for f in failures} == {("user_id, rank", 2), ("user_id, item_id", 2)}

    df.loc[[3, 6], schema.SCORE] = None  # u1 and u2: different shares (users go to shares in turn)
    (failure,) = by_share(df).failures
    assert (failure.column, failure.rule, failure.unexpected_count, failure.row_count) == (schema.SCORE, NOT_NULL, 2, 12)
    renamed = by_share(recommendations().rename(columns={schema.SOURCE: "origin"}), share_rows=3)
    assert sorted((f.column, f.rule) for f in renamed.failures) == [  # each once, not once per share
        ("origin", "expect_table_columns_to_match_set"),
        (schema.SOURCE, "expect_column_to_exist"),
    ]


def test_empty_or_off_contract_recommendations_fail():
    empty = validate_recommendations(recommendations().iloc[:0], top_k=TOP_K, run_date=RUN_DATE)
    assert [(f.column, f.rule) for f in empty.failures] == [(None, "expect_table_row_count_to_be_between")]

    renamed = recommendations().rename(columns={schema.PROPENSITY: "prob"})
    report = validate_recommendations(renamed, top_k=TOP_K, run_date=RUN_DATE)
    assert {(f.column, f.rule) for f in report.failures} == {
        (schema.PROPENSITY, "expect_column_to_exist"),
        ("prob", "expect_table_columns_to_match_set"),
    }


# --- bad input: one classification ----------------------------------------------------------------


def test_input_errors_are_classified_in_one_place():
    """Bad input derives from errors.InputError (the DAG does not retry it); the rest may be transient."""
    from dql_model import errors
    from dql_model.config import ConfigError
    from dql_model.ops import spark_jobs

    report = quality.QualityReport(table=schema.EVENTS, partition=PARTITION, row_count=0)
    with pytest.raises(errors.BadDate) as bad_date:
        schema.iso_date("2026-13-45")
    bad_input = [
        DataQualityError(report),
        ConfigError("score.engine='gpu' is not one of ['torch', 'spark']"),
        errors.MissingInput("raw events partition is missing"),
        errors.EmptyInput("raw events partition has no rows"),
        bad_date.value,
    ]
    assert all(isinstance(e, errors.InputError) for e in bad_input)
    # Callers that catch the built-in kinds still catch them.
    assert isinstance(errors.MissingInput("x"), FileNotFoundError)
    assert all(isinstance(e, ValueError) for e in bad_input if not isinstance(e, errors.MissingInput))
    maybe_transient = [
        spark_jobs.JobFailed("Spark job build_training_data failed"),
        FileNotFoundError("staged partition is missing"),
        ConnectionError("S3 endpoint unreachable"),
        ValueError("a bug"),
    ]
    assert not any(isinstance(e, errors.InputError) for e in maybe_transient)


def test_a_missing_raw_partition_is_bad_input(tiny_config):
    from dql_model import errors

    with pytest.raises(errors.MissingInput, match="the table has no event_date partitions"):
        quality.check_raw_partition(tiny_config, "2026-11-20")
    write_raw(tiny_config, pd.DataFrame({schema.USER_ID: ["u1"]}).iloc[:0])  # loads 2026-11-20 only
    with pytest.raises(errors.MissingInput, match="event_date=2026-11-21 .*; the last loaded day is 2026-11-20"):
        quality.check_raw_partition(tiny_config, "2026-11-21")
    with pytest.raises(errors.MissingInput, match="loaded days run from 2026-11-20 to 2026-11-20; load 2026-11-19"):
        quality.check_raw_partition(tiny_config, "2026-11-19")


# --- the empty-day policy and columns outside the contract -----------------------------------------


def write_raw(cfg, events: pd.DataFrame, *, day: str = "2026-11-20") -> None:
    from dql_model.warehouse import storage

    contract = schema.arrow_schema(schema.EVENTS)
    fields = [contract.field(c) if c in contract.names else pa.field(c, pa.string()) for c in events.columns]
    table = pa.Table.from_pandas(events, schema=pa.schema(fields), preserve_index=False)
    storage.write_partition(table, cfg.layout.partition(schema.EVENTS, day))
    items = pa.table({schema.ITEM_ID: [f"i{i}" for i in range(11)]})
    storage.write_partition(items, cfg.layout.table(schema.ITEMS))


def test_an_empty_raw_partition_fails_by_default_naming_the_partition_and_the_setting(tiny_config):
    from dql_model import errors

    assert tiny_config.quality.empty_partition == "fail"
    write_raw(tiny_config, raw_events().iloc[:0])
    with pytest.raises(errors.EmptyInput) as caught:
        quality.check_raw_partition(tiny_config, "2026-11-20")
    message = str(caught.value)
    assert "raw events partition event_date=2026-11-20" in message and "has no rows" in message
    assert "quality.empty_partition is 'fail'" in message and "'warn'" in message


def test_an_empty_raw_partition_only_warns_when_set_to_warn(tiny_config):
    cfg = tiny_config.replace(quality={"empty_partition": "warn"})
    write_raw(cfg, raw_events().iloc[:0])
    report = quality.check_raw_partition(cfg, "2026-11-20")

    assert report.success and report.row_count == 0
    assert len(report.warnings) == 1
    assert "event_date=2026-11-20 has no rows; quality.empty_partition is 'warn'" in report.warnings[0]
    assert report.summary()["warnings"] == report.warnings
    assert "warning: partition event_date=2026-11-20 has no rows" in report.message()


def test_an_empty_partition_with_a_broken_schema_still_fails(tiny_config):
    cfg = tiny_config.replace(quality={"empty_partition": "warn"})
    write_raw(cfg, raw_events().iloc[:0].drop(columns=[schema.SESSION_ID]))
    with pytest.raises(DataQualityError, match="column session_id, rule expect_column_to_exist"):
        quality.check_raw_partition(cfg, "2026-11-20")


def test_columns_outside_the_contract_are_reported_not_failed():
    events = raw_events().assign(campaign="black-friday", referrer="mail")
    report = validate_raw_events(events, partition=PARTITION, max_bad_fraction=0.0)
    assert report.success, report.message()
    assert report.extra_columns == ("campaign", "referrer")
    assert report.summary()["extra_columns"] == ["campaign", "referrer"]
    assert "['campaign', 'referrer'] are not in the events contract" in report.message()




def test_the_task_logs_the_warnings_and_returns_the_extra_columns(tiny_config, capsys):
    from dql_model.pipeline import tasks

    write_raw(tiny_config, raw_events().assign(campaign="x"))
    summary = tasks.validate_raw_events("2026-11-20", cfg=tiny_config)
    out = capsys.readouterr().out
    assert "[dqlrec] warning: raw events event_date=2026-11-20: column(s) ['campaign'] are not in" in out
    assert summary["extra_columns"] == ["campaign"]


# --- the rule table shared with the Spark job, future events, duplicates, mixed files, Data Docs ---------


def test_the_gate_and_the_spark_job_implement_exactly_the_rule_table():
    from dql_model.contract import rules
    from jobs import clean_events

    assert set(quality.GX_RULES) == set(clean_events.SPARK_RULES) == set(rules.RULE_ORDER)
    assert clean_events.RULE_ORDER == rules.RULE_ORDER  # the quarantine's order is the table's
    assert all(rule.description and rule.columns for rule in rules.RAW_ROW_RULES)


def test_future_events_count_toward_the_limit_and_a_day_of_them_fails():
    events = raw_events()
    events.loc[:2, schema.EVENT_TIME] = pd.Timestamp("2026-11-21 00:00", tz="UTC")  # the next day's first instant
    tolerated = validate_raw_events(events, partition=PARTITION, max_bad_fraction=0.02)
    assert tolerated.success
    failure = only(tolerated)
    assert (failure.column, failure.rule, failure.unexpected_count) == (schema.EVENT_TIME, BETWEEN, 3)
    assert failure.contract_rule == schema.RULE_TIME_OUT_OF_RANGE
    assert "contract rule event_time_out_of_range: event_time is at or after the end (UTC)" in failure.describe()

    future = raw_events().assign(**{schema.EVENT_TIME: pd.Timestamp("2026-12-24 10:00", tz="UTC")})
    report = validate_raw_events(future, partition=PARTITION, max_bad_fraction=0.01)
    assert not report.success  # was quarantined whole after the gate let it through
    assert "column event_time, rule expect_column_values_to_be_between: 200 of 200 rows (100.00%)" in report.message()


def test_events_older_than_the_lookback_count_as_out_of_range():
    events = raw_events()
    events.loc[:9, schema.EVENT_TIME] = pd.Timestamp("2026-11-16 23:59", tz="UTC")  # 4 days before, lookback 3
    report = validate_raw_events(events, partition=PARTITION, max_bad_fraction=0.0, lookback_days=3)
    assert only(report).unexpected_count == 10 and not report.success
    assert validate_raw_events(events, partition=PARTITION, max_bad_fraction=0.0, lookback_days=4).success


def test_duplicates_count_toward_the_limit():
    events = raw_events()
    copies = pd.concat([events, events.iloc[[5, 6, 7]]], ignore_index=True)  # null session ids included
    report = validate_raw_events(copies, partition=PARTITION, max_bad_fraction=0.01)
    failure = only(report)
    assert (failure.rule, failure.unexpected_count, failure.contract_rule) == (
        quality.DUPLICATE_RULE, 3, schema.RULE_DUPLICATE
    )
    assert not report.success  # 3 of 203 rows is more than 1 %
    assert validate_raw_events(copies, partition=PARTITION, max_bad_fraction=0.02).success


def test_a_partition_mixing_string_and_int64_files_names_the_files_and_the_column(tiny_config):
    import pyarrow.parquet as pq

    from dql_model import errors

    write_raw(tiny_config, raw_events())
    folder = tiny_config.layout.partition(schema.EVENTS, "2026-11-20")
    good = pq.read_table(f"{folder}/part-00000.parquet")
    ints = good.set_column(1, schema.USER_ID, pa.array(range(good.num_rows), pa.int64()))
    pq.write_table(ints, f"{folder}/part-00001.parquet")
    with pytest.raises(errors.InputError) as caught:
        quality.check_raw_partition(tiny_config, "2026-11-20")
    message = str(caught.value)
    assert f"partition {folder} mixes column types across its files" in message
    assert "column user_id: string in part-00000.parquet; int64 in part-00001.parquet" in message


def test_every_nights_gates_land_in_one_cumulative_data_docs_site_that_retention_trims(tiny_config, tmp_path):
    """Two nights' raw gates and a recommendations gate, the second night in a fresh context (as a
    new process would build it): the one site under the reports lists every validation."""
    from pathlib import Path
    from urllib.parse import quote

    write_raw(tiny_config, raw_events())
    quality.check_raw_partition(tiny_config, "2026-11-20")
    docs = Path(tiny_config.layout.data_docs())
    assert docs == Path(tiny_config.layout.reports()) / "data_docs"
    quality._docs_batch_definition.cache_clear()  # the next night: nothing of the first left in memory
    later = raw_events()
    later[schema.EVENT_TIME] = later[schema.EVENT_TIME] + pd.Timedelta(days=1)
    write_raw(tiny_config, later, day="2026-11-21")
    quality.check_raw_partition(tiny_config, "2026-11-21")
    validate_recommendations(recommendations(), top_k=TOP_K, run_date=RUN_DATE, docs_dir=str(docs))

    pages = sorted(p.relative_to(docs / "validations").parts[:2] for p in (docs / "validations").rglob("*.html"))
    assert pages == [
        ("dqlrec_events", "event_date=2026-11-20"),
        ("dqlrec_events", "event_date=2026-11-21"),
        ("dqlrec_recommendations", f"run_date={RUN_DATE}"),
    ]
    index = (docs / "index.html").read_text()
    for suite, run in pages:  # the index links every night's page, not only the latest
        assert f"validations/{suite}/{quote(run)}/" in index, f"{suite} {run} missing from the index"
    assert not list(Path(tiny_config.layout.reports()).glob("run_date=*/data_docs"))

    # Retention keeps the newest night of each suite: the oldest page and its result go, and the next
    # validation's index no longer lists them.
    from dql_model.warehouse import retention

    plan = retention.warehouse_plan(tiny_config.replace(retention={"report_nights": 1}))
    trimmed = [r for r in plan.removals if r.layer == "reports/data_docs"]
    assert sorted(Path(r.path).relative_to(docs).as_posix() for r in trimmed) == [
        "_store/validation_results_store/dqlrec_events/event_date=2026-11-20",
        "validations/dqlrec_events/event_date=2026-11-20",
    ]
    retention.apply(tiny_config, retention.Plan(trimmed))
    validate_recommendations(recommendations(), top_k=TOP_K, run_date="2026-11-28", docs_dir=str(docs))
    index = (docs / "index.html").read_text()
    assert "event_date%3D2026-11-20" not in index
    assert all(f"validations/{s}/{quote(r)}/" in index for s, r in pages[1:] + [("dqlrec_recommendations", "run_date=2026-11-28")])


def test_the_recommendations_gate_writes_its_docs_beside_the_raw_gates(tmp_path):
    docs = tmp_path / "data_docs"
    broken = recommendations()
    broken.loc[0, schema.RANK] = 99
    report = validate_recommendations(broken, top_k=TOP_K, run_date=RUN_DATE, docs_dir=str(docs))
    assert not report.success  # the docs do not change the verdict
    assert {p.parts[-4] for p in (docs / "validations").rglob("*.html")} == {"dqlrec_recommendations"}
