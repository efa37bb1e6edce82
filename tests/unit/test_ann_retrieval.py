"""score.retrieval=ann: FAISS IVF candidates re-ranked exactly, against the exact path (brute force)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
import torch

from dql_model.config import ConfigError, ModelConfig, ScoreConfig
from dql_model.contract import schema
from dql_model.judging import report
from dql_model.learning import registry
from dql_model.learning.networks import QNetwork
from dql_model.scoring import engines
from dql_model.scoring.policy import Policy
from dql_model.scoring.retrieval import AnnSettings
from dql_model.warehouse import data, storage
from tests.factories import item_features, write_night

torch.set_num_threads(1)
AT = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
N_ITEMS = 3000
UNAVAILABLE = np.arange(7, N_ITEMS + 1, 7)


@pytest.fixture(scope="module")
def model() -> QNetwork:
    torch.manual_seed(3)
    return QNetwork(N_ITEMS, 2, ModelConfig(embed_dim=16, hidden_dim=16, price_buckets=4)).eval()


def states(n_users: int, excluded: dict[int, list[int]] | None = None, seed: int = 0) -> data.UserStates:
    """Random 1..4-item states; every third user has bought 5 random items, plus ``excluded``'s."""
    rng = np.random.default_rng(seed)
    items = np.zeros((n_users, 4), dtype=np.int64)
    bought: list[list[int]] = []
    for u in range(n_users):
        length = rng.integers(1, 5)
        items[u, -length:] = rng.integers(1, N_ITEMS + 1, size=length)
        mine = rng.integers(1, N_ITEMS + 1, size=5).tolist() if u % 3 == 0 else []
        bought.append(sorted(set(mine + (excluded or {}).get(u, []))))
    return data.UserStates(
        user_id=pa.array([f"u{u:04d}" for u in range(n_users)]),
        state_items=items,
        state_events=(items > 0).astype(np.int64),
        excluded_indptr=np.concatenate([[0], np.cumsum([len(b) for b in bought])]).astype(np.int64),
        excluded_items=np.array([i for b in bought for i in b], dtype=np.int64),
    )


def ranker(model, ann: AnnSettings | None, top_k: int = 10, **policy):
    return engines.make_ranker(
        model,
        item_features(N_ITEMS, unavailable=UNAVAILABLE),
        Policy(top_k=top_k, exclude="purchased", **policy),
        popularity=np.zeros(N_ITEMS + 1),
        model_version="v1",
        generated_at=AT,
        ann=ann,
    )


def lists(model, users: data.UserStates, ann: AnnSettings | None, top_k: int = 10) -> pa.Table:
    batches = engines.ranker_batches(ranker(model, ann, top_k), users, batch_size=64)
    return pa.concat_tables(table for table, _, _ in batches).sort_by([("user_id", "ascending"), ("rank", "ascending")])


def per_user(table: pa.Table) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for user, item in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), strict=True):
        out.setdefault(user, []).append(item)
    return out


def test_every_list_probed_gives_the_exact_lists_with_the_masks(model):
    users = states(300)
    exact = lists(model, users, None)
    ann = lists(model, users, AnnSettings(lists=24, probe=24, candidates=40))
    assert per_user(ann) == per_user(exact)
    np.testing.assert_allclose(ann.column("score").to_numpy(), exact.column("score").to_numpy(), rtol=1e-5)
    assert ann.column("source").to_pylist() == exact.column("source").to_pylist()
    # the masks: no unavailable item, no user's own purchase
    recommended = per_user(ann)
    assert not set(f"i{i}" for i in UNAVAILABLE) & {i for items in recommended.values() for i in items}
    for u in range(0, 300, 3):
        bought = users.excluded_items[users.excluded_indptr[u] : users.excluded_indptr[u + 1]]
        assert not {f"i{i}" for i in bought} & set(recommended[f"u{u:04d}"])
    assert all(len(items) == 10 for items in recommended.values())


def test_a_user_whose_candidates_are_all_excluded_still_gets_the_exact_full_list(model):
    probe = states(1)
    # the user's 60 best items by brute force, all bought: every ann candidate (40, every list probed) is masked
    best = per_user(lists(model, probe, None, top_k=60))["u0000"]
    bought = {0: [int(item[1:]) for item in best]}
    users = states(1, excluded=bought)
    ann = lists(model, users, AnnSettings(lists=24, probe=24, candidates=40))
    exact = lists(model, users, None)
    assert per_user(ann) == per_user(exact)
    assert len(per_user(ann)["u0000"]) == 10
    assert not set(per_user(ann)["u0000"]) & set(best)
    settings = AnnSettings(lists=24, probe=24, candidates=40, recall_sample=1)
    summary = engines.choose_retrieval(ranker(model, settings), users, settings, seed=0)
    assert (summary["recall"], summary["users"], summary["exact_fallback_users"]) == (1.0, 1, 1)
    assert "(1 short of candidates, ranked exactly)" in report.retrieval_line({"retrieval": summary})


def test_few_probes_lose_recall_and_the_summary_reports_it(model):
    users = states(200, seed=1)
    settings = AnnSettings(lists=64, probe=1, candidates=10, recall_sample=200)
    exact, ann = per_user(lists(model, users, None)), per_user(lists(model, users, settings))
    shared = sum(len(set(exact[u]) & set(ann[u])) for u in exact)
    expected = shared / sum(len(items) for items in exact.values())
    assert expected < 1.0
    summary = engines.choose_retrieval(ranker(model, settings), users, settings, seed=5)
    assert summary["k"] == 10 and summary["users"] == 200
    assert summary["recall"] == pytest.approx(expected)
    assert "64 lists, 1 probed" in summary["method"]
    # a sample smaller than the night: that many users, the same ones on a rerun
    sampled = AnnSettings(lists=64, probe=1, candidates=10, recall_sample=50)
    first = engines.choose_retrieval(ranker(model, sampled), users, sampled, seed=5)
    again = engines.choose_retrieval(ranker(model, sampled), users, sampled, seed=5)
    assert first["users"] == 50 and first == again


def test_ann_rows_are_the_same_on_a_rerun(model):
    users = states(120, seed=2)
    settings = AnnSettings(lists=32, probe=3, candidates=20)
    assert lists(model, users, settings).equals(lists(model, users, settings))


def test_auto_is_the_default_and_exploring_policies_rank_exactly(model):
    assert ScoreConfig().retrieval == "auto"
    assert AnnSettings.from_config(ScoreConfig()) == AnnSettings(auto=True, min_items=100_000, min_recall=0.95)
    assert AnnSettings.from_config(ScoreConfig(retrieval="exact")) is None
    assert AnnSettings.from_config(ScoreConfig(engine="spark")) is None  # auto on spark: exact, no error
    assert AnnSettings.from_config(ScoreConfig(retrieval="ann", ann_probe=4)) == AnnSettings(0, 4, 0, 1000)
    assert ranker(model, None).ann_index is None
    assert engines.choose_retrieval(ranker(model, None), states(3), None, seed=0) == {}
    settings = AnnSettings(lists=8, probe=1, candidates=10)
    exploring = ranker(model, settings, explore_slots=2)
    assert exploring.ann_index is None
    assert engines.choose_retrieval(exploring, states(3), settings, seed=0)["method"].startswith("exact")


def test_auto_below_its_size_ranks_exactly_and_says_so(model):
    users = states(60, seed=4)
    settings = AnnSettings.from_config(ScoreConfig(ann_min_items=N_ITEMS))  # 2,572 items are indexable
    small = ranker(model, settings)
    assert small.ann_index is None and small.indexable == N_ITEMS - len(UNAVAILABLE)
    assert engines.choose_retrieval(small, users, settings, seed=0) == {
        "method": f"exact (score.retrieval=auto: {small.indexable:,} items, ann from {N_ITEMS:,})"
    }
    assert lists(model, users, settings).equals(lists(model, users, None))


def test_auto_probes_more_lists_until_the_recall_holds_else_ranks_exactly(model):
    users = states(200, seed=1)

    def measured(probe: int, **auto) -> tuple[engines.Ranker, dict]:
        settings = AnnSettings(lists=16, probe=probe, candidates=10, recall_sample=200, **auto)
        built = ranker(model, settings)
        return built, engines.choose_retrieval(built, users, settings, seed=0)

    one, two = measured(1)[1]["recall"], measured(2)[1]["recall"]
    assert one < two < 0.99  # the premise: an untrained model's unclustered vectors, 16 lists
    assert AnnSettings(lists=16, probe=1).max_probe(16) == 2  # auto probes at most an eighth of the lists
    # a threshold between the two: auto doubles the probe once and keeps the index
    kept, chosen = measured(1, auto=True, min_recall=(one + two) / 2)
    assert kept.ann_index is not None and kept.ann_index.probe == 2
    assert chosen["recall"] == two and chosen["method"].startswith("ann (FAISS IVF, 16 lists, 2 probed")
    # a threshold no eighth of the lists reaches: the night ranks exactly, and the lists are the exact ones
    dropped, chosen = measured(1, auto=True, min_recall=0.99)
    assert dropped.ann_index is None and chosen["recall"] == two
    assert chosen["method"] == (
        f"exact (score.retrieval=auto: ann's recall@10 {two:.4f} at 2 of 16 lists probed is below score.ann_min_recall 0.99)"
    )
    ranked = pa.concat_tables(t for t, _, _ in engines.ranker_batches(dropped, users, batch_size=64))
    assert per_user(ranked) == per_user(lists(model, users, None))


def test_auto_lists_and_candidates():
    settings = AnnSettings()
    assert settings.n_lists(200_000) == 4 * 447
    assert settings.n_lists(3) == 3
    assert settings.n_candidates(20) == 200


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retrieval": "ann", "engine": "spark"}, "torch engine only"),
        ({"ann_candidates": 5, "top_k": 20}, "score.ann_candidates=5 is below score.top_k=20"),
        ({"ann_probe": 0}, "score.ann_probe=0"),
        ({"ann_lists": -1}, "score.ann_lists=-1"),
        ({"retrieval": "hnsw"}, "hnsw"),
        ({"ann_recall_sample": 0}, "score.retrieval=auto trusts ann only on its measured recall"),
        ({"ann_min_recall": 1.5}, r"score.ann_min_recall=1.5 must be within \[0, 1\]"),
        ({"ann_min_items": -1}, "score.ann_min_items=-1"),
    ],
)
def test_bad_retrieval_settings_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        ScoreConfig(**options)


def test_report_prints_the_recall_with_the_sample_size():
    scored = {"method": "ann (FAISS IVF, 1788 lists, 16 probed, 200,000 items, 200 candidates)",
              "k": 20, "recall": 0.97125, "users": 1000}
    text = report.render_markdown({"run_date": "2026-11-27", "retrieval": scored})
    assert "- retrieval: ann (FAISS IVF, 1788 lists" in text
    assert "recall@20 against brute force 0.9712 on 1,000 sampled users" in text
    assert "retrieval" not in report.render_markdown({"run_date": "2026-11-27"})
    published = {"users": 3, "top_k": 20, "rows": 60, "model_version": "v1", "warehouse_path": "w", "export_uri": "e"}
    closing = report.render_summary({"run_date": "2026-11-27", "published": published, "retrieval": scored})
    assert "  retrieval      ann (FAISS IVF, 1788 lists" in closing and "on 1,000 sampled users" in closing


def test_the_torch_engine_scores_with_ann_and_reports_its_recall(tiny_config, capsys):
    run_date, n_items = "2026-11-27", 30
    exact_cfg = tiny_config.replace(
        score={"top_k": 5, "batch_size": 16}, model={"embed_dim": 8, "hidden_dim": 8, "price_buckets": 4}
    )
    write_night(exact_cfg.layout, run_date, n_items=n_items, n_users=150)
    torch.manual_seed(5)
    net = QNetwork(n_items, 4, ModelConfig(embed_dim=8, hidden_dim=8, price_buckets=4))
    net.set_item_features(np.arange(n_items + 1) % 4, np.arange(n_items + 1) % 4)
    version = registry.save_model(
        net.eval(), exact_cfg, registry_root=exact_cfg.registry.root, metrics={}, data_window={"run_date": run_date}
    )
    order = [(schema.USER_ID, "ascending"), (schema.RANK, "ascending")]
    compared = [schema.USER_ID, schema.RANK, schema.ITEM_ID, schema.SOURCE]

    def night(cfg) -> tuple[pa.Table, engines.ScoringSummary]:
        summary = engines.score_with_torch(cfg, run_date, version)
        return storage.read_partition(cfg.layout.staged(schema.RECOMMENDATIONS, run_date)).sort_by(order), summary

    exact, exact_summary = night(exact_cfg.replace(score={"retrieval": "exact"}))
    assert exact_summary.retrieval == {} and "retrieval" not in capsys.readouterr().out
    auto, auto_summary = night(exact_cfg)  # the default, auto: 30 items are far below its size
    assert auto.select(compared).equals(exact.select(compared))
    assert auto_summary.retrieval == {"method": "exact (score.retrieval=auto: 30 items, ann from 100,000)"}
    assert "retrieval exact (score.retrieval=auto: 30 items, ann from 100,000)" in capsys.readouterr().out
    ann_cfg = exact_cfg.replace(score={"retrieval": "ann", "ann_lists": 4, "ann_probe": 4, "ann_candidates": 10})
    ann, summary = night(ann_cfg)
    assert ann.select(compared).equals(exact.select(compared))
    assert summary.retrieval["recall"] == 1.0 and summary.retrieval["k"] == 5
    assert 0 < summary.retrieval["users"] <= 150
    assert engines.ScoringSummary.read(ann_cfg.layout.scoring_summary(run_date)).retrieval == summary.retrieval
    assert f"recall@5 against brute force 1.0000 on {summary.retrieval['users']} sampled users" in capsys.readouterr().out
