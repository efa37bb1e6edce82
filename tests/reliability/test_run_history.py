"""The run history of two real nights (tests/reliability/conftest.py): the gate records the training
step's seconds, and the second night's report draws the trend of both from what `dqlrec runs` reads."""

from __future__ import annotations

import json
from pathlib import Path

from dql_model.judging import history, plots, report
from tests.reliability.conftest import DAY1, DAY2


def test_two_real_nights_make_a_two_point_trend_with_their_training_seconds(night):
    records = history.night_history(night)
    assert [r["run_date"] for r in records] == [DAY1, DAY2]
    assert all(r["finished"] and r["training_s"] is not None and r["training_s"] >= 0 for r in records), records

    folder = Path(night.layout.report(DAY2))
    figures = json.loads((folder / report.TREND_FILE).read_text())
    assert figures["run_date"] == [DAY1, DAY2]
    assert figures["training_s"] == [r["training_s"] for r in records]
    assert figures["rows"] == [r["rows"] for r in records] and all(n > 0 for n in figures["rows"])
    assert figures["champion"][0] is None  # the first night had no champion to face
    assert figures["challenger"] == [r["challenger"] for r in records] and figures["promoted"][0] is True
    assert (folder / plots.RUN_TREND).stat().st_size > 0
    assert f"![{plots.RUN_TREND}]({plots.RUN_TREND})" in (folder / report.MARKDOWN).read_text()
