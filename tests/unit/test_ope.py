"""Off-policy estimators against hand-computed cases and a planted policy of known value."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dql_model.evaluation import ope

# Five rows, three requests (c shows one slot only), two positions.
#   row  request pos  p_log  p_new  r   w = p_new / p_log   w r   q_logged q_target
#   0    a       0    0.5    0.25   1   0.5                 0.5   0.5      0.4
#   1    a       1    0.25   0.5    0   2.0                 0.0   0.2      0.3
#   2    b       0    0.5    1.0    1   2.0                 2.0   0.5      0.6
#   3    b       1    0.5    0.25   1   0.5                 0.5   0.4      0.3
#   4    c       0    1.0    0.25   0   0.25                0.0   0.1      0.2
HAND = {
    "request_id": np.array(["a", "a", "b", "b", "c"]),
    "position": np.array([0, 1, 0, 1, 0]),
    "propensity": np.array([0.5, 0.25, 0.5, 0.5, 1.0]),
    "reward": np.array([1.0, 0.0, 1.0, 1.0, 0.0]),
    "target_propensity": np.array([0.25, 0.5, 1.0, 0.25, 0.25]),
}
Q_LOGGED = np.array([0.5, 0.2, 0.5, 0.4, 0.1])
Q_TARGET = np.array([0.4, 0.3, 0.6, 0.3, 0.2])
FAST = ope.OPEConfig(n_bootstrap=300, seed=7)


def hand_log(**changes) -> ope.LoggedSlates:
    return ope.LoggedSlates.from_arrays(**{**HAND, **changes})


def test_ips_by_hand():
    # N = 3 requests. Position 0: (0.5 + 2.0 + 0.0) / 3 = 5/6; position 1: (0.0 + 0.5) / 3 = 1/6.
    est = ope.ips(hand_log(), FAST)
    np.testing.assert_allclose(est.position_values, [5 / 6, 1 / 6])
    assert est.value == pytest.approx(1.0)
    assert (est.n_rows, est.n_requests, est.clipped_share) == (5, 3, 0.0)
    np.testing.assert_array_equal(est.positions, [0, 1])


def test_snips_by_hand():
    # Position 0: sum w r = 2.5, sum w = 0.5 + 2 + 0.25 = 2.75, n_0 = 3 -> 2.5 / 2.75 * 3/3 = 10/11.
    # Position 1: sum w r = 0.5, sum w = 2.5, n_1 = 2 (c has no slot 1) -> 0.5 / 2.5 * 2/3 = 2/15.
    est = ope.snips(hand_log(), FAST)
    np.testing.assert_allclose(est.position_values, [10 / 11, 2 / 15])
    assert est.value == pytest.approx(10 / 11 + 2 / 15)


def test_doubly_robust_by_hand():
    # qt + w (r - ql): 0.4 + 0.5 * 0.5 = 0.65; 0.3 + 2 * (-0.2) = -0.1; 0.6 + 2 * 0.5 = 1.6;
    # 0.3 + 0.5 * 0.6 = 0.6; 0.2 + 0.25 * (-0.1) = 0.175.
    # Position 0: (0.65 + 1.6 + 0.175) / 3 = 2.425 / 3; position 1: (-0.1 + 0.6) / 3 = 0.5 / 3.
    est = ope.doubly_robust(hand_log(), Q_LOGGED, Q_TARGET, FAST)
    np.testing.assert_allclose(est.position_values, [2.425 / 3, 0.5 / 3])
    assert est.value == pytest.approx(0.975)


def test_doubly_robust_with_an_exact_model_is_the_direct_method():
    # The residuals r - q_logged vanish, so only the model's value of the target remains.
    est = ope.doubly_robust(hand_log(), HAND["reward"], Q_TARGET, FAST)
    np.testing.assert_allclose(est.position_values, [(0.4 + 0.6 + 0.2) / 3, (0.3 + 0.3) / 3])


def test_effective_sample_size_by_hand():
    # Position 0: w = 0.5, 2, 0.25 -> 2.75^2 / (0.25 + 4 + 0.0625) = 7.5625 / 4.3125.
    # Position 1: w = 2, 0.5 -> 2.5^2 / 4.25. Overall: 5.25^2 / 8.5625.
    for est in (ope.ips(hand_log(), FAST), ope.snips(hand_log(), FAST)):
        np.testing.assert_allclose(est.position_ess, [7.5625 / 4.3125, 6.25 / 4.25])
        assert est.ess == pytest.approx(27.5625 / 8.5625)


def test_clipping_by_hand():
    # clip 1.5: w = 0.5, 1.5, 1.5, 0.5, 0.25; two rows of five exceeded it.
    cfg = ope.OPEConfig(n_bootstrap=50, clip=1.5)
    est = ope.ips(hand_log(), cfg)
    np.testing.assert_allclose(est.position_values, [(0.5 + 1.5) / 3, 0.5 / 3])
    assert est.clipped_share == pytest.approx(0.4)
    # DR clips the residual's weight too: row 1 -> 0.3 + 1.5 * (-0.2) = 0.0, row 2 -> 0.6 + 1.5 * 0.5 = 1.35.
    dr = ope.doubly_robust(hand_log(), Q_LOGGED, Q_TARGET, cfg)
    np.testing.assert_allclose(dr.position_values, [(0.65 + 1.35 + 0.175) / 3, (0.0 + 0.6) / 3])
    # 7.5625 / 4.3125 unclipped; clipped weights 0.5, 1.5, 0.25 -> 2.25^2 / 2.5625.
    assert est.position_ess[0] == pytest.approx(2.25**2 / 2.5625)


def test_per_position_values_add_up_to_the_slate_value():
    for est in (
        ope.ips(hand_log(), FAST),
        ope.snips(hand_log(), FAST),
        ope.doubly_robust(hand_log(), Q_LOGGED, Q_TARGET, FAST),
    ):
        assert est.value == pytest.approx(est.position_values.sum())
        assert est.position_intervals.shape == (2, 2)


def test_ess_warnings_name_the_positions_below_the_threshold():
    # ESS: position 0 = 1.75, position 1 = 1.47, overall 3.22.
    est = ope.ips(hand_log(), ope.OPEConfig(n_bootstrap=10, min_ess=1.6))
    assert len(est.warnings) == 1 and est.warnings[0].startswith("position 1:")
    assert ope.ips(hand_log(), ope.OPEConfig(n_bootstrap=10, min_ess=1.0)).warnings == ()
    overall = ope.ips(hand_log(), ope.OPEConfig(n_bootstrap=10, min_ess=4.0)).warnings
    assert len(overall) == 3 and overall[-1].startswith("overall:")


def test_metrics_names():
    metrics = ope.snips(hand_log(), FAST).metrics()
    assert set(metrics) == {
        "ope/snips/value",
        "ope/snips/lo",
        "ope/snips/hi",
        "ope/snips/ess",
        "ope/snips/value@0",
        "ope/snips/value@1",
    }
    assert metrics["ope/snips/value@1"] == pytest.approx(2 / 15)


def test_table_inputs_match_arrays():
    pa = pytest.importorskip("pyarrow")
    pd = pytest.importorskip("pandas")
    expected = ope.ips(hand_log(), FAST)
    renamed = {**{k: v for k, v in HAND.items() if k != "reward"}, "clicked": HAND["reward"]}
    for table in (pa.table(renamed), pd.DataFrame(renamed), renamed):
        est = ope.ips(ope.LoggedSlates.from_table(table, columns={"reward": "clicked"}), FAST)
        assert est.value == expected.value and est.interval == expected.interval
    with pytest.raises(ope.LogError, match="no column 'reward'"):
        ope.LoggedSlates.from_table(pa.table(renamed))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"propensity": np.array([0.5, 0.0, 0.5, 0.5, 0.0])}, r"propensity has 2 values not in \(0, 1\]"),
        ({"propensity": np.array([0.5, 0.25, 1.5, 0.5, 1.0])}, r"propensity has 1 values not in \(0, 1\]"),
        ({"propensity": np.array([0.5, np.nan, 0.5, 0.5, 1.0])}, "propensity has 1 missing"),
        (
            {"target_propensity": np.array([0.25, 0.5, 1.0, -0.1, 0.25])},
            r"target_propensity has 1 values not in \[0, 1\]",
        ),
        ({"reward": np.array([1.0, np.nan, np.nan, 1.0, 0.0])}, "reward has 2 missing"),
        ({"reward": np.array([1.0, 0.0, 1.0, 1.0])}, "not aligned"),
        ({"position": np.array([0, 1, 0, -1, 0])}, "position has 1 negative"),
        ({"position": np.array([0.0, 1.5, 0.0, 1.0, 0.0])}, "position has 1 non-integer"),
        ({"position": np.array([0, 0, 0, 1, 0])}, r"1 \(request_id, position\) pairs occur more than once"),
        ({"request_id": np.array(["a", None, "b", "b", None], dtype=object)}, "2 rows have no request_id"),
        ({"reward": np.array(["x", "y", "z", "u", "v"])}, "reward must be numeric"),
    ],
)
def test_validation_names_the_column_and_the_count(changes, message):
    with pytest.raises(ope.LogError, match=message):
        hand_log(**changes)


def test_doubly_robust_checks_the_model_columns():
    with pytest.raises(ope.LogError, match="q_target has 4 values for 5 logged rows"):
        ope.doubly_robust(hand_log(), Q_LOGGED, Q_TARGET[:4], FAST)
    with pytest.raises(ope.LogError, match="q_logged has 1 missing"):
        ope.doubly_robust(hand_log(), np.where(np.arange(5) == 2, np.nan, Q_LOGGED), Q_TARGET, FAST)


def test_config_rejects_bad_values():
    for bad in ({"n_bootstrap": 0}, {"confidence": 1.0}, {"clip": 0.0}, {"min_support": 1.5}):
        with pytest.raises(ValueError, match="ope."):
            ope.OPEConfig(**bad)


def test_bootstrap_resamples_requests_not_rows():
    # 400 requests with two slots each, w = 1, both slots of a request rewarded alike (0 or 2 per list):
    # per-request totals have sd 1, so the slate value's standard error is 1 / sqrt(400) = 0.05 and
    # a 95% interval is about 2 * 1.96 * 0.05 = 0.196 wide. Resampling the 800 rows independently
    # would give 2 * 0.5 / sqrt(800) = 0.035, an interval 0.139 wide.
    n = 400
    reward = np.repeat(np.arange(n) % 2, 2).astype(float)
    log = ope.LoggedSlates.from_arrays(
        request_id=np.repeat(np.arange(n), 2),
        position=np.tile([1, 2], n),
        propensity=np.full(2 * n, 0.5),
        reward=reward,
        target_propensity=np.full(2 * n, 0.5),
    )
    lo, hi = ope.ips(log, ope.OPEConfig(n_bootstrap=2000, seed=3)).interval
    assert 0.17 < hi - lo < 0.22


def test_bootstrap_is_seeded_and_ignores_row_order():
    sim = planted()
    log = sim["log"]
    first, again = ope.snips(log, FAST), ope.snips(log, FAST)
    assert first.interval == again.interval
    np.testing.assert_array_equal(first.position_intervals, again.position_intervals)
    other = ope.snips(log, ope.OPEConfig(n_bootstrap=300, seed=8))
    assert other.interval != first.interval
    order = np.random.default_rng(0).permutation(log.n_rows)
    shuffled = ope.LoggedSlates.from_arrays(
        **{name: values[order] for name, values in sim["columns"].items()}
    )
    moved = ope.snips(shuffled, FAST)
    assert moved.value == pytest.approx(first.value)
    np.testing.assert_allclose(moved.interval, first.interval)


# --- a planted policy of known value ----------------------------------------------------------------

N_ITEMS, N_SLOTS, N_REQUESTS = 6, 3, 20_000
SEGMENT_SHARE = np.array([0.6, 0.4])
# Click probability = attraction of the item to the segment x examination of the position.
# High click rates keep the clicks' own noise small, so most of IPS's variance comes from the weights,
# which is the part a good reward model removes.
ATTRACTION = np.array([[0.90, 0.80, 0.70, 0.60, 0.50, 0.40], [0.40, 0.50, 0.60, 0.70, 0.80, 0.90]])
EXAMINATION = np.array([1.0, 0.8, 0.6])
CLICK = ATTRACTION[:, :, None] * EXAMINATION[None, None, :]  # [segment, item, position]
# Plackett-Luce score of each item per segment: the logger favours the first items, the target
# favours each segment's attractive items more sharply, and neither excludes any item.
LOG_SCORES = np.array([[1.0, 0.8, 0.6, 0.4, 0.2, 0.0], [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]])
TARGET_SCORES = np.array([[2.0, 1.2, 0.4, -0.4, -1.2, -2.0], [-2.0, -1.2, -0.4, 0.4, 1.2, 2.0]])


def plackett_luce_marginals(scores: np.ndarray) -> np.ndarray:
    """[segment, item, position] P(item at position) under draws without replacement, by enumeration."""
    out = np.zeros((len(scores), N_ITEMS, N_SLOTS))
    for seg, weights in enumerate(np.exp(scores)):
        for ranking in itertools.permutations(range(N_ITEMS), N_SLOTS):
            prob, left = 1.0, weights.sum()
            for item in ranking:
                prob *= weights[item] / left
                left -= weights[item]
            out[seg, list(ranking), range(N_SLOTS)] += prob
    return out


def planted(seed: int = 2024) -> dict:
    rng = np.random.default_rng(seed)
    p_log, p_new = plackett_luce_marginals(LOG_SCORES), plackett_luce_marginals(TARGET_SCORES)
    segment = rng.choice(2, size=N_REQUESTS, p=SEGMENT_SHARE)
    # Gumbel top-k of the scores is a Plackett-Luce draw without replacement.
    noisy = LOG_SCORES[segment] + rng.gumbel(size=(N_REQUESTS, N_ITEMS))
    shown = np.argsort(-noisy, axis=1)[:, :N_SLOTS]  # [request, position]
    seg = np.repeat(segment, N_SLOTS)
    item = shown.ravel()
    pos = np.tile(np.arange(N_SLOTS), N_REQUESTS)
    clicked = (rng.random(len(item)) < CLICK[seg, item, pos]).astype(float)
    columns = {
        "request_id": np.repeat(np.arange(N_REQUESTS), N_SLOTS),
        "position": pos + 1,
        "propensity": p_log[seg, item, pos],
        "reward": clicked,
        "target_propensity": p_new[seg, item, pos],
    }
    # A slightly wrong reward model: 15% too optimistic, plus a constant offset.
    q_hat = CLICK * 1.15 + 0.01
    true_by_position = np.einsum("s,sak,sak->k", SEGMENT_SHARE, p_new, CLICK)
    return {
        "columns": columns,
        "log": ope.LoggedSlates.from_arrays(**columns),
        "q_logged": q_hat[seg, item, pos],
        "q_target": (p_new * q_hat).sum(axis=1)[seg, pos],
        "true_by_position": true_by_position,
        "logging_value": float(np.einsum("s,sak,sak->", SEGMENT_SHARE, p_log, CLICK)),
    }


def test_marginals_are_distributions():
    # Each position shows exactly one item; each item is shown at most once per list.
    p = plackett_luce_marginals(TARGET_SCORES)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (p.sum(axis=2) <= 1.0 + 1e-12).all()


def test_each_estimator_recovers_the_planted_policy_within_its_interval():
    sim = planted()
    truth = sim["true_by_position"].sum()
    cfg = ope.OPEConfig(n_bootstrap=500, seed=1)
    estimates = [
        ope.ips(sim["log"], cfg),
        ope.snips(sim["log"], cfg),
        ope.doubly_robust(sim["log"], sim["q_logged"], sim["q_target"], cfg),
    ]
    # The target is worth clearly more than the logger: ignoring the weights would miss it.
    assert truth - sim["logging_value"] > 0.05
    for est in estimates:
        lo, hi = est.interval
        assert lo <= truth <= hi, (est.estimator, est.value, est.interval, truth)
        assert lo <= est.value <= hi
        assert not lo <= sim["logging_value"] <= hi
        assert hi - lo < 0.1 * truth
        np.testing.assert_allclose(est.position_values, sim["true_by_position"], rtol=0.1)
        assert est.warnings == ()
    ips, _, dr = estimates
    assert dr.interval[1] - dr.interval[0] < 0.8 * (ips.interval[1] - ips.interval[0])


def test_support_of_a_fully_supported_target():
    sim = planted()
    sup = ope.support(sim["log"])
    np.testing.assert_array_equal(sup.positions, [1, 2, 3])
    # E[w] = 1 at every position when every item can be logged there.
    assert (np.abs(sup.supported_mass - 1.0) < 3 * sup.supported_mass_se).all()
    np.testing.assert_array_equal(sup.matched_share, 1.0)
    np.testing.assert_array_equal(sup.n_rows, N_REQUESTS)
    assert sup.warnings == ()


def test_support_by_hand_and_a_target_outside_the_log():
    # Hand case: position 0 mean w = (0.5 + 2 + 0.25) / 3; position 1 = (2 + 0.5) / 2.
    sup = ope.support(hand_log(), ope.OPEConfig(min_ess=0))
    np.testing.assert_allclose(sup.supported_mass, [2.75 / 3, 1.25])
    assert sup.warnings == ()
    # The logger shows items 0 and 1 (p_log 0.5 each); the target gives them 0.5 and 0.2 and puts
    # 0.3 on item 2, which is never logged. Weights 1 and 0.4 -> mean 0.7 = the supported mass.
    n = 200
    item = np.arange(n) % 2
    log = ope.LoggedSlates.from_arrays(
        request_id=np.arange(n),
        position=np.zeros(n, dtype=int),
        propensity=np.full(n, 0.5),
        reward=np.ones(n),
        target_propensity=np.where(item == 0, 0.5, 0.2),
    )
    sup = ope.support(log, ope.OPEConfig(min_ess=0))
    assert sup.supported_mass[0] == pytest.approx(0.7)
    assert len(sup.warnings) == 1 and "about 70%" in sup.warnings[0]
    # Every row rewarded: IPS sees 0.7 of the value, SNIPS rescales to the supported part's reward.
    assert ope.ips(log, FAST).value == pytest.approx(0.7)
    assert ope.snips(log, FAST).value == pytest.approx(1.0)
