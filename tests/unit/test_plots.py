"""The report's figures are real PNG files, drawn only from the data a run has."""

from __future__ import annotations

from dql_model.judging import plots

PNG = b"\x89PNG\r\n\x1a\n"


def evaluation() -> dict:
    history = [
        {"epoch": 1.0, "loss/total": 6.0, "eval/ndcg@10": 0.10, "eval/purchase/ndcg@10": 0.2},
        {"epoch": 2.0, "loss/total": 5.5, "eval/ndcg@10": 0.12, "eval/purchase/ndcg@10": float("nan")},
    ]
    metrics = {"eval/ndcg@10": 0.1, "eval/view/ndcg@10": 0.08, "eval/purchase/ndcg@10": 0.3}
    ret = {"mean": 1.2, "ci95": 0.1}
    return {
        "learning_curves": {"challenger": history, "supervised": history[:1], "empty": []},
        "metrics": {"challenger": metrics, "popularity": {"eval/ndcg@10": 0.05}},
        "simulation": {
            "settings": {"steps": 20, "slate": 10, "seeds": 5},
            "policies": {
                "challenger": {"return": ret},
                "popularity": {"return": {"mean": 0.7, "ci95": float("nan")}},
            },
        },
    }


def test_write_plots_draws_every_figure(tmp_path):
    names = plots.write_plots(evaluation(), tmp_path / "report")
    assert names == [plots.LEARNING_CURVES, plots.METRICS_BY_EVENT, plots.SIMULATED_RETURN]
    for name in names:
        assert (tmp_path / "report" / name).read_bytes()[:8] == PNG


def test_write_plots_skips_what_the_run_does_not_have(tmp_path):
    only_metrics = {"metrics": evaluation()["metrics"], "learning_curves": {"x": []}, "simulation": {}}
    assert plots.write_plots(only_metrics, tmp_path) == [plots.METRICS_BY_EVENT]
    assert plots.write_plots({}, tmp_path / "none") == []


def test_loop_return_draws_both_panels_from_a_loop_summary(tmp_path):
    from dql_model.pipeline import shop_loop

    def twin(policy, seed, returns):
        days = [
            {"return": r, "purchases": r, "revenue": r, "list_reward_per_visit": r, "ope": {}}
            for r in returns
        ]
        return {"policy": policy, "seed": seed, "days": days, "nights": []}

    settings = shop_loop.LoopSettings(days=3, seeds=(0, 1), policies=("dqn", "supervised"))
    summary = shop_loop.summarise(
        [
            twin("dqn", 0, [1, 2, 3]),
            twin("dqn", 1, [2, 2, 2]),
            twin("supervised", 0, [1, 1, 1]),
            twin("supervised", 1, [2, 1, 2]),
        ],
        settings,
    )
    path = plots.loop_return(summary, tmp_path / plots.LOOP_RETURN)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
