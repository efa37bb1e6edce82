"""The gate's changes of the champion reach the registry's promotion log with its decision and reason."""

from __future__ import annotations

from dql_model.judging import gate
from dql_model.learning import registry
from tests.unit.test_gate import RUN_DATE, night_cfg, register  # noqa: F401 (night_cfg is a fixture)


def test_the_gate_logs_a_promotion_with_its_reason_and_nothing_when_it_keeps_the_champion(night_cfg):  # noqa: F811
    root = night_cfg.registry.root
    first = register(night_cfg, trained=True, run_date="2026-11-26")
    night = gate.evaluate_night(night_cfg, RUN_DATE, first, progress=lambda _: None)
    assert night.promoted
    [entry] = registry.promotion_log(root)
    assert (entry["action"], entry["version"], entry["previous"]) == ("gate", first, None)
    assert entry["why"] == f"gate {RUN_DATE}: promoted ({night.reason})"

    worse = register(night_cfg, trained=False, run_date=RUN_DATE)
    night = gate.evaluate_night(night_cfg, RUN_DATE, worse, progress=lambda _: None)
    assert not night.promoted
    assert registry.promotion_log(root) == [entry]  # the champion did not change: no line
