"""The torch engine streams its batches to part files: the rows of the in-memory path, a bounded
look-ahead, and a partition that stays whole when scoring dies midway."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dql_model import faults
from dql_model.config import ModelConfig
from dql_model.contract import schema
from dql_model.contract.layout import swap_area
from dql_model.learning import registry
from dql_model.learning.networks import QNetwork
from dql_model.scoring import engines, ranking
from dql_model.scoring.policy import Policy
from dql_model.warehouse import data, storage
from tests.factories import write_night

RUN_DATE = "2026-11-27"
N_ITEMS, N_USERS = 30, 150
ORDER = [(schema.USER_ID, "ascending"), (schema.RANK, "ascending")]
SAME_RUN = [c for c in schema.arrow_schema(schema.RECOMMENDATIONS).names if c != schema.GENERATED_AT]


@pytest.fixture
def shop(tiny_config):
    """Tonight's partitions of the factory shop and a random model of its items, registered."""
    cfg = tiny_config.replace(
        score={"top_k": 5, "batch_size": 16, "explore_slots": 1}, model={"embed_dim": 8, "hidden_dim": 8, "price_buckets": 4}
    )
    write_night(cfg.layout, RUN_DATE, n_items=N_ITEMS, n_users=N_USERS)
    torch.manual_seed(5)
    net = QNetwork(N_ITEMS, 4, ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4))
    net.set_item_features(np.arange(N_ITEMS + 1) % 4, np.arange(N_ITEMS + 1) % 4)
    version = registry.save_model(net.eval(), cfg, registry_root=cfg.registry.root, metrics={}, data_window={"run_date": RUN_DATE})
    return cfg, version


def in_memory_rows(cfg, version: str) -> tuple[pa.Table, object]:
    """What score_with_torch wrote before it streamed: rank_users' one table of the same inputs."""
    layout = cfg.layout
    policy = Policy.from_config(cfg.score, RUN_DATE, protocol=data.night_protocol(cfg, RUN_DATE))
    model, _ = registry.load_model(Path(cfg.registry.root) / version)
    items = data.load_item_features(layout.partition(schema.ITEM_INDEX, RUN_DATE), price_buckets=cfg.model.price_buckets)
    states = data.load_user_states(
        layout.partition(schema.USER_STATES, RUN_DATE),
        max_len=cfg.etl.max_len,
        exclude=policy.exclude,
        since=data.active_since(cfg.score, data.night_protocol(cfg, RUN_DATE), RUN_DATE),
    )
    popularity = data.action_counts(
        layout.partition(schema.TRANSITIONS, RUN_DATE), n_items=items.n_items, split=(schema.TRAIN, schema.VALIDATION)
    )
    return engines.rank_users(
        model, states, items, policy, batch_size=cfg.score.batch_size, popularity=popularity,
        model_version=version, generated_at=datetime.now(UTC),
    )  # fmt: skip


def staged(cfg) -> Path:
    return Path(cfg.layout.staged(schema.RECOMMENDATIONS, RUN_DATE))


def test_streamed_parts_hold_the_rows_of_the_in_memory_path(shop, monkeypatch, capsys):
    cfg, version = shop
    monkeypatch.setattr(engines, "ROWS_PER_PART", 64)
    summary = engines.score_with_torch(cfg, RUN_DATE, version)

    old, old_counts = in_memory_rows(cfg, version)
    new = storage.read_partition(staged(cfg))
    assert new.num_rows == old.num_rows == N_USERS * 5
    assert new.sort_by(ORDER).select(SAME_RUN).equals(old.sort_by(ORDER).select(SAME_RUN))
    assert new.schema == schema.arrow_schema(schema.RECOMMENDATIONS)
    files = sorted(staged(cfg).glob("part-*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [64] * 11 + [750 - 64 * 11]
    # The summary, counted batch by batch, says what the whole table says.
    assert (summary.rows, summary.users) == (old.num_rows, len(set(old.column(schema.USER_ID).to_pylist())))
    sources = old.group_by(schema.SOURCE).aggregate([([], "count_all")]).to_pydict()
    assert summary.sources == {s: dict(zip(*sources.values(), strict=True)).get(s, 0) for s in schema.SOURCES}
    assert summary.sources[schema.SOURCE_EXPLORE] > 0
    assert (summary.masked, summary.short_lists) == (old_counts.masked, old_counts.short_lists)
    assert "part-00011.parquet written (46 rows); 150 of 150 users" in capsys.readouterr().out


def test_a_scoring_that_dies_after_a_part_keeps_the_previous_partition_and_reruns_to_the_same_rows(shop, monkeypatch):
    cfg, version = shop
    monkeypatch.setattr(engines, "ROWS_PER_PART", 64)
    engines.score_with_torch(cfg, RUN_DATE, version)
    clean = storage.read_partition(staged(cfg)).select(SAME_RUN)
    previous = clean.slice(0, 10)
    storage.write_partition(previous, staged(cfg))  # what was staged before tonight's rescoring
    summary_file = Path(cfg.layout.scoring_summary(RUN_DATE))
    summary_file.unlink()

    reached = []

    def die_at_the_third_part(name: str) -> None:
        reached.append(name)
        if reached.count("score:part_written") == 3:
            raise MemoryError("killed while scoring")

    monkeypatch.setattr(faults, "point", die_at_the_third_part)
    with pytest.raises(MemoryError):
        engines.score_with_torch(cfg, RUN_DATE, version)
    assert storage.read_partition(staged(cfg)).select(SAME_RUN).equals(previous)
    assert not summary_file.exists()  # no summary for rows that were never swapped in
    assert "swap:staged" not in reached
    swap = Path(swap_area(str(staged(cfg).parent)))
    assert not swap.exists() or list(swap.iterdir()) == []  # the half-written parts are gone

    monkeypatch.setattr(faults, "point", lambda name: None)
    engines.score_with_torch(cfg, RUN_DATE, version)
    assert storage.read_partition(staged(cfg)).select(SAME_RUN).equals(clean)
    assert summary_file.exists()


def test_batches_are_ranked_only_a_few_ahead_of_the_writer(shop, monkeypatch):
    cfg, version = shop
    workers = torch.get_num_threads()
    bound = (engines.AHEAD_PER_WORKER + 1) * workers + 1  # queued ahead, running, and the one handed over
    ranked, ran_past_the_bound = [], threading.Event()
    rank_batch = ranking.Ranker.rank_batch

    def counted(self, *args):
        ranked.append(1)
        if len(ranked) > bound:
            ran_past_the_bound.set()
        return rank_batch(self, *args)

    monkeypatch.setattr(ranking.Ranker, "rank_batch", counted)
    states = data.load_user_states(cfg.layout.partition(schema.USER_STATES, RUN_DATE), max_len=cfg.etl.max_len)
    model, _ = registry.load_model(Path(cfg.registry.root) / version)
    items = data.load_item_features(cfg.layout.partition(schema.ITEM_INDEX, RUN_DATE), price_buckets=4)
    batches = engines.ranked_batches(
        model, states, items, Policy(top_k=5), batch_size=4, popularity=np.ones(N_ITEMS + 1),
        model_version=version, generated_at=datetime.now(UTC),
    )  # fmt: skip
    n_batches = len(ranking.canonical_batches(states.user_id, ranking.user_keys(states.user_id), 4))
    assert n_batches > 2 * bound

    first = next(batches)  # the writer is busy with it: the scoring threads must stop soon
    assert not ran_past_the_bound.wait(timeout=2.0), f"{len(ranked)} batches ranked while the writer held one"
    rest = list(batches)
    assert len(ranked) == 1 + len(rest) == n_batches
    owners = np.concatenate([first[1], *(b[1] for b in rest)])
    assert sorted(set(owners.tolist())) == list(range(N_USERS))  # every user, each in one batch
