"""The comparison tables and the Markdown report."""

from __future__ import annotations

from dql_model.judging import report


def metrics(ndcg: float) -> dict[str, float]:
    out = {"eval/n": 100.0, "eval/ndcg@10": ndcg, "eval/purchase/n": 7.0, "eval/purchase/ndcg@10": 2 * ndcg}
    return out | {"eval/hr@5": 0.5, "eval/coverage@10": 0.25, "eval/purchased@10": 0.0}


SIMULATION = {
    "settings": {"users": 500, "steps": 20, "seeds": 5, "slate": 10, "refresh": "session"},
    "policies": {
        "challenger": {
            "return": {"mean": 1.5, "ci95": 0.05},
            "purchases": {"mean": 1.0, "ci95": 0.04},
            "carts": {"mean": 1.7, "ci95": 0.02},
            "slate_share": {"mean": 0.6, "ci95": 0.01},
        },
        "supervised": {"return": {"mean": 1.25, "ci95": 0.06}},
    },
    "reference": "challenger",
    "vs_reference": {"supervised": {"mean": -0.25, "ci95": 0.03}},
}
PER_STEP = {
    "settings": SIMULATION["settings"] | {"refresh": "step"},
    "policies": {"challenger": {"return": {"mean": 1.125, "ci95": 0.07}}},
    "reference": "challenger",
}


def test_comparison_table_has_a_row_per_model_in_order():
    challenger = metrics(0.2) | {"eval/hr@10": 0.3}
    table = report.comparison_table({"challenger": challenger, "popularity": metrics(0.1)})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["model", "NDCG@10", "HR@10"]
    assert lines[1].startswith("challenger") and "0.2000" in lines[1] and "0.4000" in lines[1]
    assert lines[2].startswith("popularity") and " - " in lines[2]  # no HR@10 given
    # Columns of event types no model was evaluated on (no carts, views or ratings here) are left out.
    assert "purchase NDCG@10" in lines[0] and "cart" not in lines[0] and "rating" not in lines[0]
    markdown = report.comparison_table({"challenger": metrics(0.2)}, markdown=True)
    assert markdown.splitlines()[1].startswith("|---|")


def test_simulation_table_shows_intervals_and_paired_differences():
    lines = report.simulation_table(SIMULATION).splitlines()
    assert "return - challenger" in lines[0]
    assert "1.500 ± 0.050" in lines[1] and "(reference)" in lines[1]
    assert "1.250 ± 0.060" in lines[2] and "-0.250 ± 0.030" in lines[2] and " - " in lines[2]


def test_markdown_report_has_tables_details_simulation_and_plots():
    summary = {
        "run_date": "2026-11-27",
        "published": {"users": 3, "top_k": 2, "rows": 6, "model_version": "v", "warehouse_path": "w", "export_uri": "e"},
        "evaluation": {
            "metrics": {"challenger": metrics(0.2), "cooccurrence": metrics(0.1)},
            "validation_events": 100,
            "promoted": True,
            "reason": "better",
            "baselines": {
                "supervised": {
                    "picked": {"train": {"lr": 0.005}, "model": {}},
                    "trials": [
                        {"overrides": {"train": {}, "model": {}}, "value": 0.1},
                        {"overrides": {"train": {"lr": 0.005}, "model": {}}, "value": 0.2},
                    ],
                    "metric": "eval/ndcg@10",
                },
                "cooccurrence": {"picked": {"window": 3, "decay": 0.5}, "trials": [{}, {}, {}], "metric": "eval/ndcg@10"},
            },
            "simulation": SIMULATION,
            "simulation_more": [PER_STEP, {"settings": {"refresh": "step"}, "policies": {}}],
            "plots": ["learning_curves.png", "simulated_return.png"],
        },
    }
    text = report.render_markdown(summary)
    assert "| challenger | 0.2000 |" in text
    assert "**purchases** (7 events)" in text and "| model | hr@5 | hr@10 |" in text
    assert "{defaults} -> 0.1000, {lr=0.005} -> 0.2000; picked {lr=0.005}" in text
    assert "window 3, decay 0.5 (best of 3" in text
    assert "## Simulated policy value" in text and "| supervised | 1.250 ± 0.060 |" in text
    assert "![learning_curves.png](learning_curves.png)" in text
    assert "New items" not in text  # the evaluation has no new-item figures
    # the headline protocol first, then the per-click one; a simulation without results is left out
    session, step = text.index("lists ranked at each session start"), text.index("lists re-ranked after every click")
    assert session < text.index("| challenger | 1.500 ± 0.050 |") < step < text.index("| challenger | 1.125 ± 0.070 |")
    assert text.count("re-ranked after every click") == 1
    closing = report.render_summary(summary | {"report_dir": "r"})
    assert "simulated return per shopper, lists ranked at each session start" in closing
    assert closing.index("1.500 ± 0.050") < closing.index("1.125 ± 0.070")


def test_tables_list_the_dqn_first_whatever_the_json_order():
    table = report.comparison_table({"popularity": metrics(0.1), "supervised": metrics(0.3), "challenger": metrics(0.2)})
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["challenger", "supervised", "popularity"]


def test_new_item_section_lists_every_model_and_the_counts():
    figures = {
        "eval/new_items/items": 40.0,
        "eval/new_items/n": 120.0,
        "eval/new_items/hr@10": 0.25,
        "eval/new_items/ndcg@10": 0.125,
        "eval/new_items/slots@10": 0.0375,
        "eval/new_items/coverage@10": 0.5,
    }
    new_items = {"category_popularity": figures, "challenger": figures | {"eval/new_items/hr@10": 0.0}}
    summary = {
        "run_date": "2026-11-27",
        "evaluation": {"metrics": {"challenger": metrics(0.2)}, "new_items": new_items},
    }
    text = report.render_markdown(summary)
    section = text[text.index("### New items") :]
    by_category = section.index("| category_popularity | 0.2500 | 0.1250 | 0.0375 | 0.5000 |")
    assert section.index("| challenger | 0.0000 |") < by_category  # the DQN first
    assert "40 items the training split never shows" in section and "120 validation events" in section


def rated(ndcg: float) -> dict[str, float]:
    return metrics(ndcg) | {"eval/rating/n": 40.0, "eval/rating/ndcg@10": 0.0, "eval/rating/hr@5": 0.0}


def test_a_column_that_cannot_be_non_zero_is_left_out_and_the_reason_said_once():
    why = "every one of its 40 validation events is on an item the user had already purchased, which ..."
    evaluation = {
        "metrics": {"challenger": rated(0.2), "popularity": rated(0.1)},
        "validation_events": 100,
        "unscorable": {"rating": why},
    }
    summary = {
        "run_date": "2026-11-27",
        "published": {"users": 3, "top_k": 2, "rows": 6, "model_version": "v", "warehouse_path": "w", "export_uri": "e"},
        "evaluation": evaluation,
    }
    note = f"Not shown: rating — {why}."
    for text in (report.render_summary(summary | {"report_dir": "r"}), report.render_markdown(summary)):
        assert "rating NDCG@10" not in text and "purchase NDCG@10" in text
        assert text.count(note) == 1
    assert "**ratings**" not in report.render_markdown(summary)  # nor its detail table
    # Ratings that some list can hold keep their column.
    scorable = summary | {"evaluation": evaluation | {"unscorable": {}}}
    assert "rating NDCG@10" in report.render_summary(scorable | {"report_dir": "r"})
    assert "Not shown" not in report.render_markdown(scorable) and "**ratings** (40 events)" in report.render_markdown(scorable)


def test_report_and_summary_count_masked_pairs_per_reason_and_short_lists():
    summary = {
        "run_date": "2026-11-27",
        "published": {"users": 3, "top_k": 2, "rows": 5, "model_version": "v", "warehouse_path": "w", "export_uri": "e"},
        "masks": {
            "masked": {"already_purchased": 1234, "unavailable": 60, "new_since_training": 0},
            "short_lists": {"model": 0, "fallback": 1},
        },
    }
    line = (
        "masked (user, item) pairs: already purchased 1,234, unavailable 60, new since training 0; "
        "1 user had fewer than 2 candidates and got short lists, not padded (1 ranked by the fallback)"
    )
    assert f"  masks          {line}" in report.render_summary(summary | {"report_dir": "r"})
    assert f"- {line}" in report.render_markdown(summary)
    # A run scored before the counts existed says nothing about them.
    assert "masked" not in report.render_summary(summary | {"masks": {}, "report_dir": "r"})
