"""The raw gate's input volume and drift check: the run date's events against the trailing nights."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pyarrow as pa
import pytest

from dql_model.config import ConfigError, QualityConfig
from dql_model.contract import schema
from dql_model.warehouse import quality, storage
from dql_model.warehouse.quality import FAIL, MIX, NEW_ITEMS, NEW_USERS, OK, VOLUME, WARN

RUN_DATE = "2026-11-27"
PARTITION = f"event_date={RUN_DATE}"
USUAL_MIX = {schema.VIEW: 0.8, schema.ADD_TO_CART: 0.15, schema.PURCHASE: 0.05}


def day(seed: int, *, n: int = 2000, mix: dict[str, float] = USUAL_MIX, user_prefix: str = "u") -> pa.Table:
    """A day of a steady shop: 300 regular users, 100 items, the usual event mix."""
    rng = np.random.default_rng(seed)
    return pa.table({
        schema.USER_ID: [f"{user_prefix}{i}" for i in rng.integers(0, 300, n)],
        schema.ITEM_ID: [f"i{i}" for i in rng.integers(0, 100, n)],
        schema.EVENT_TYPE: rng.choice(list(mix), size=n, p=list(mix.values())),
    })  # fmt: skip


TRAILING = [day(seed) for seed in range(7)]


def levels(figures: list[quality.DriftFigure]) -> dict[str, str]:
    return {f.name: f.level for f in figures}


def test_a_normal_day_passes_every_figure():
    figures = quality.input_drift(day(99), TRAILING, QualityConfig())
    assert levels(figures) == {VOLUME: OK, MIX: OK, NEW_ITEMS: OK, NEW_USERS: OK}
    report = quality.add_drift(quality.QualityReport(schema.EVENTS, PARTITION, 2000), figures)
    assert report.success and report.warnings == []
    assert report.summary()["drift"][VOLUME]["trailing_mean"] == 2000


def test_a_day_with_sixty_percent_fewer_events_warns_or_fails_by_its_thresholds():
    quiet = day(99, n=800)
    warned = quality.input_drift(quiet, TRAILING, QualityConfig(volume_warn=0.5, volume_fail=0.9))
    assert levels(warned)[VOLUME] == WARN
    report = quality.add_drift(quality.QualityReport(schema.EVENTS, PARTITION, 800), warned)
    assert report.success
    assert report.warnings == [
        f"partition {PARTITION}: 800 events against a trailing mean of 2000 over 7 nights: 60.00% fewer, "
        "beyond the warn threshold 0.5 (quality.volume_warn)"
    ]

    failed = quality.input_drift(quiet, TRAILING, QualityConfig(volume_warn=0.3, volume_fail=0.5))
    report = quality.add_drift(quality.QualityReport(schema.EVENTS, PARTITION, 800), failed)
    assert not report.success
    (failure,) = report.blocking
    assert failure.rule == VOLUME
    assert "800 events against a trailing mean of 2000 over 7 nights: 60.00% fewer" in failure.detail
    assert "beyond the fail threshold 0.5 (quality.volume_fail)" in failure.detail
    assert "DQLREC_QUALITY__VOLUME_FAIL" in failure.detail
    assert f"raw events partition {PARTITION} failed 1 data-quality rule" in report.message()


def test_a_shifted_event_mix_is_flagged_with_each_types_share():
    shifted = day(99, mix={schema.VIEW: 0.4, schema.ADD_TO_CART: 0.3, schema.PURCHASE: 0.3})
    figures = quality.input_drift(shifted, TRAILING, QualityConfig())
    assert levels(figures)[VOLUME] == OK
    (mix,) = [f for f in figures if f.name == MIX]
    assert mix.level == FAIL and mix.deviation == pytest.approx(0.4, abs=0.03)  # 0.5 * (0.4 + 0.15 + 0.25)
    text = mix.describe(PARTITION)
    assert text.startswith(f"partition {PARTITION}: event-type mix add_to_cart ")
    assert re.search(r"purchase 2\d\.\d\d% \(trailing [45]\.\d\d%\)", text) and "(quality.mix_fail)" in text
    only_warned = quality.input_drift(shifted, TRAILING, QualityConfig(mix_warn=0.1, mix_fail=0.5))
    assert levels(only_warned)[MIX] == WARN


def test_renamed_user_ids_show_as_a_surge_of_new_users():
    renamed = day(99, user_prefix="visitor-")
    figures = quality.input_drift(renamed, TRAILING, QualityConfig())
    assert levels(figures)[NEW_USERS] == FAIL and levels(figures)[NEW_ITEMS] == OK
    (users,) = [f for f in figures if f.name == NEW_USERS]
    assert users.value == 1.0 and users.nights == 6  # the first trailing night is the others' history


def test_new_shares_count_ids_unseen_on_every_earlier_night():
    nights = [pa.chunked_array([["a", "b"]]), pa.chunked_array([["a", "c", "c", None]]), pa.chunked_array([["d", "b"]])]
    assert quality._new_shares(nights) == [0.5, 0.5]  # night 1: c of {a, c}; night 2: d of {d, b}


def test_without_trailing_nights_nothing_is_judged():
    assert quality.input_drift(day(1), [], QualityConfig()) == []
    assert {f.name for f in quality.input_drift(day(1), TRAILING[:1], QualityConfig())} == {VOLUME, MIX}


def test_thresholds_are_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"quality.volume_warn=0.9 and quality.volume_fail=0.5"):
        QualityConfig(volume_warn=0.9, volume_fail=0.5)


def test_the_raw_gate_fails_a_quiet_day_naming_the_partition(tiny_config):
    """Through check_raw_partition: the trailing partitions are read from the warehouse."""
    cfg = tiny_config.replace(quality={"drift_nights": 3, "volume_fail": 0.5, "volume_warn": 0.3})
    contract = schema.arrow_schema(schema.EVENTS)

    def write(run_date: str, table: pa.Table) -> None:
        start = dt.datetime.fromisoformat(run_date).replace(tzinfo=dt.UTC)
        full = table.append_column(schema.EVENT_TIME, pa.array([start] * table.num_rows, pa.timestamp("us", tz="UTC")))
        full = full.append_column(schema.VALUE, pa.nulls(table.num_rows, pa.float64()))
        full = full.append_column(schema.SESSION_ID, pa.nulls(table.num_rows, pa.string()))
        storage.write_partition(full.select(contract.names).cast(contract), cfg.layout.partition(schema.EVENTS, run_date))

    storage.write_partition(pa.table({schema.ITEM_ID: [f"i{i}" for i in range(100)]}), cfg.layout.table(schema.ITEMS))
    for back, seed in ((3, 0), (2, 1), (1, 2)):
        write((dt.date.fromisoformat(RUN_DATE) - dt.timedelta(days=back)).isoformat(), day(seed, n=500))
    write(RUN_DATE, day(99, n=200).slice(0, 200))
    with pytest.raises(quality.DataQualityError) as caught:
        quality.check_raw_partition(cfg, RUN_DATE)
    message = str(caught.value)
    assert f"raw events partition {PARTITION}" in message
    assert "200 events against a trailing mean of 500 over 3 nights: 60.00% fewer" in message
    assert caught.value.report.summary()["drift"][VOLUME]["level"] == FAIL

    cfg = cfg.replace(quality={"volume_fail": 0.9, "volume_warn": 0.5})
    report = quality.check_raw_partition(cfg, RUN_DATE)
    assert report.success and any("60.00% fewer" in w for w in report.warnings)
