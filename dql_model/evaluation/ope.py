"""Off-policy value of a candidate policy from logged slates: IPS, self-normalised IPS, doubly robust.

Owns the off-policy estimators and their checks (weights, intervals, effective sample size, support).

The log holds one row per shown slot: the request (one served list), the position, the logging
policy's propensity ``p_log`` (the *marginal* probability that it put the shown item at that
position), the observed reward ``r``, and the candidate (target) policy's ``p_new``: its marginal
probability of putting that same item at that same position.

Assumption (position-based, independent items; the "pseudo-inverse for marginals" / IIPS
formulation): the expected reward of a slot depends only on the request, the item in it and its
position, never on the other items of the list. Then a policy's expected slate reward is the sum
over positions of sum_a P(a at k | request) * q(request, a, k), and with w = p_new / p_log,
E_log[w * r] at position k is the target policy's expected reward at k. The estimate of each
position is unbiased on its own and the slate value is their sum. Where the assumption fails (a
strong item above takes the clicks of the one below), the estimates are biased by the interaction.

Formulas, with N requests, n_k rows at position k, w_i = p_new_i / p_log_i (``min(w_i, clip)``
when clipping is on), qt_i the reward model's value of the target policy at the row's request and
position (sum_a p_new(a) * q_hat(a)) and ql_i its value of the logged item:

    IPS_k   = (1 / N) * sum_{i at k} w_i r_i
    SNIPS_k = (n_k / N) * sum_{i at k} w_i r_i / sum_{i at k} w_i     (weights rescaled to mean 1 at k)
    DR_k    = (1 / N) * sum_{i at k} [qt_i + w_i (r_i - ql_i)]
    value   = sum_k estimate_k                                        (expected slate reward per request)
    ESS_k   = (sum_{i at k} w_i)^2 / sum_{i at k} w_i^2              (overall: the same over all rows)

A request with no row at position k (a short list) adds nothing there: the per-position values
are per request, so they add up to the slate value. Intervals are percentile bootstraps over
requests (the rows of one list share a user and a moment, so they are not independent draws).

Propensities must be marginals per position, and ``dql_model.scoring.policy`` writes them: exact
where no slot above is random (greedy slots, and the first of the ``explore_slots`` when
``explore_epsilon`` is 0), below a random slot an unbiased average over ``score.propensity_draws``
replicate slates of the policy (the probability given each replicate's items above). That average
carries Monte Carlo noise into the weights w. An item every replicate put above its position
gets the served slate's own term over draws + 1 instead of 0: small, so a large weight; more draws,
less of both.

Numpy only. ``LoggedSlates.from_table`` reads an impressions table (pyarrow, pandas or a dict of
arrays) with the columns ``request_id``, ``position``, ``propensity``, ``reward`` and
``target_propensity``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dql_model.config import OPEConfig
from dql_model.contract import schema
from dql_model.errors import InputError
from dql_model.evaluation.intervals import resample_counts

_BOOTSTRAP_CELLS = 1 << 21
"""Resampling counts held at once (requests x resamples): bounds the bootstrap's memory (~50 MB)."""


LOG_COLUMNS = (schema.REQUEST_ID, schema.POSITION, schema.PROPENSITY, schema.REWARD, schema.TARGET_PROPENSITY)
"""The columns of an impressions table that the estimators read (``LoggedSlates.from_table``)."""


class LogError(InputError, ValueError):
    """Logged slates that cannot be evaluated: a column is missing, misaligned or out of range."""


DEFAULTS = OPEConfig()
"""The estimators' settings when a caller gives none (``Config().ope``)."""


@dataclass(frozen=True, eq=False)
class LoggedSlates:
    """Validated logged slots, in the caller's row order, with requests and positions as codes."""

    request: np.ndarray
    """[rows] int64 code of the row's request, 0..n_requests-1 (sorted request ids)."""
    position: np.ndarray
    """[rows] int64 code of the row's position, 0..len(positions)-1."""
    positions: np.ndarray
    """[P] the distinct positions, ascending (as logged: 0- or 1-based)."""
    p_log: np.ndarray
    """[rows] the logging policy's marginal propensity of the shown item at its position, in (0, 1]."""
    reward: np.ndarray
    """[rows] the observed reward of the slot."""
    p_new: np.ndarray
    """[rows] the target policy's marginal probability of the same item at the same position, in [0, 1]."""
    n_requests: int
    """Distinct requests (served lists)."""

    @classmethod
    def from_arrays(
        cls, *, request_id: Any, position: Any, propensity: Any, reward: Any, target_propensity: Any
    ) -> LoggedSlates:
        """Check and encode aligned arrays; raises ``LogError`` naming the column and the count."""
        columns = {
            schema.REQUEST_ID: _column(request_id, schema.REQUEST_ID),
            schema.POSITION: _column(position, schema.POSITION),
            schema.PROPENSITY: _column(propensity, schema.PROPENSITY),
            schema.REWARD: _column(reward, schema.REWARD),
            schema.TARGET_PROPENSITY: _column(target_propensity, schema.TARGET_PROPENSITY),
        }
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise LogError(f"logged slates: columns are not aligned, lengths {lengths}")
        if not lengths[schema.REQUEST_ID]:
            raise LogError("logged slates: no rows to evaluate")
        requests = columns[schema.REQUEST_ID]
        null_ids = _null_mask(requests)
        if null_ids.any():
            raise LogError(f"logged slates: {int(null_ids.sum())} rows have no {schema.REQUEST_ID}")
        p_log = _floats(columns[schema.PROPENSITY], schema.PROPENSITY)
        _check_range(p_log, schema.PROPENSITY, (p_log > 0) & (p_log <= 1), "in (0, 1]")
        p_new = _floats(columns[schema.TARGET_PROPENSITY], schema.TARGET_PROPENSITY)
        _check_range(p_new, schema.TARGET_PROPENSITY, (p_new >= 0) & (p_new <= 1), "in [0, 1]")
        reward = _floats(columns[schema.REWARD], schema.REWARD)
        _, request_code = np.unique(requests, return_inverse=True)
        positions, position_code = np.unique(_positions(columns[schema.POSITION]), return_inverse=True)
        n_requests = int(request_code.max()) + 1
        slot = request_code.astype(np.int64) * len(positions) + position_code
        repeated = np.bincount(slot) > 1
        if repeated.any():
            raise LogError(
                f"logged slates: {int(repeated.sum())} ({schema.REQUEST_ID}, {schema.POSITION}) pairs "
                "occur more than once; a served list shows one item per position"
            )
        return cls(
            request=request_code.astype(np.int64),
            position=position_code.astype(np.int64),
            positions=positions,
            p_log=p_log,
            reward=reward,
            p_new=p_new,
            n_requests=n_requests,
        )

    @classmethod
    def from_table(cls, table: Any, *, columns: Mapping[str, str] | None = None) -> LoggedSlates:
        """From an impressions table: pyarrow Table, pandas DataFrame or a dict of arrays.

        ``columns`` maps a contract name (``request_id``, ``position``, ``propensity``, ``reward``,
        ``target_propensity``) to the table's own name where they differ.
        """
        names = dict(columns or {})
        arrays = {}
        for name in LOG_COLUMNS:
            source = names.get(name, name)
            try:
                arrays[name] = np.asarray(table[source])
            except KeyError:
                raise LogError(f"logged slates: the table has no column {source!r} ({name})") from None
        return cls.from_arrays(**arrays)

    @property
    def n_rows(self) -> int:
        return len(self.request)

    def weights(self, clip: float | None = None) -> np.ndarray:
        """[rows] w = p_new / p_log, cut at ``clip`` when given."""
        w = self.p_new / self.p_log
        return w if clip is None else np.minimum(w, clip)


@dataclass(frozen=True, eq=False)
class Estimate:
    """One estimator's value of the target policy: per position, for the slate, with intervals."""

    estimator: str
    """``ips``, ``snips`` or ``dr``."""
    value: float
    """Expected slate reward per request: the sum of ``position_values``."""
    interval: tuple[float, float]
    """Percentile bootstrap interval of ``value`` over requests."""
    positions: np.ndarray
    """[P] the positions, ascending."""
    position_values: np.ndarray
    """[P] expected reward per request at each position."""
    position_intervals: np.ndarray
    """[P, 2] bootstrap interval of each position's value."""
    ess: float
    """(sum w)^2 / sum w^2 over all rows: how many rows the weighted estimate is worth."""
    position_ess: np.ndarray
    """[P] the effective sample size of each position's rows."""
    n_rows: int
    """Logged rows used."""
    n_requests: int
    """Requests (served lists) behind them: the bootstrap's unit."""
    clipped_share: float
    """Share of rows whose weight exceeded the clip threshold (0 without clipping)."""
    config: OPEConfig
    """The settings it was computed with (resamples, confidence, seed, clip)."""
    warnings: tuple[str, ...] = field(default=())
    """Why the estimate may be unreliable (too few effective rows), in words; empty when none."""

    def metrics(self, prefix: str = "ope/") -> dict[str, float]:
        """Flat metric names: ``ope/ips/value``, ``ope/ips/lo``, ``ope/ips/hi``, ``ope/ips/ess``,
        ``ope/ips/value@<position>``."""
        base = f"{prefix}{self.estimator}/"
        out = {
            f"{base}value": self.value,
            f"{base}lo": self.interval[0],
            f"{base}hi": self.interval[1],
            f"{base}ess": self.ess,
        }
        for pos, val in zip(self.positions.tolist(), self.position_values.tolist(), strict=True):
            out[f"{base}value@{pos}"] = val
        return out


@dataclass(frozen=True, eq=False)
class Support:
    """How much of the target policy's mass the logging policy's exploration covers, per position.

    ``supported_mass`` is the mean importance weight of a position's rows. Its expectation under the
    log is sum over items a with p_log(a) > 0 of p_new(a), averaged over requests: the share of the
    target's probability at that position that falls on items the logging policy can show there
    (this needs the log's propensities to be right). 1 means full support; below 1, the target puts
    the rest on items the log never shows at that position, IPS and DR lose that part of the value
    (they lean toward zero reward for it) and SNIPS assumes it earns what the supported part earns.
    """

    positions: np.ndarray
    """[P] the positions, ascending."""
    n_rows: np.ndarray
    """[P] logged rows at each position."""
    supported_mass: np.ndarray
    """[P] mean of w = p_new / p_log: estimated share of the target's mass the log supports."""
    supported_mass_se: np.ndarray
    """[P] its standard error, sd(w) / sqrt(n_rows)."""
    matched_share: np.ndarray
    """[P] share of rows whose logged item the target could also put there (p_new > 0): the rows IPS learns from."""
    ess: np.ndarray
    """[P] effective sample size of each position's weights."""
    warnings: tuple[str, ...] = field(default=())
    """Positions with too few effective rows or clearly partial support, in words."""


def ips(log: LoggedSlates, config: OPEConfig = DEFAULTS) -> Estimate:
    """Inverse propensity scoring: IPS_k = (1 / N) sum_{i at k} w_i r_i; unbiased under full support."""
    w = log.weights(config.clip)
    return _estimate("ips", log, config, np.stack([w * log.reward]), _per_request_mean)


def snips(log: LoggedSlates, config: OPEConfig = DEFAULTS) -> Estimate:
    """Self-normalised IPS: SNIPS_k = (n_k / N) sum w r / sum w over position k's rows.

    Dividing by the weights' sum instead of their count trades a small bias for less variance, and
    keeps the estimate within the rewards' range. A resample with no weight at a position gives 0 there.
    """
    w = log.weights(config.clip)
    stats = np.stack([w * log.reward, w, np.ones_like(w)])
    return _estimate("snips", log, config, stats, _self_normalised)


def doubly_robust(
    log: LoggedSlates, q_logged: Any, q_target: Any, config: OPEConfig = DEFAULTS
) -> Estimate:
    """Doubly robust: DR_k = (1 / N) sum_{i at k} [qt_i + w_i (r_i - ql_i)].

    ``q_logged`` [rows]: the reward model's value of the logged item at the row's request and position.
    ``q_target`` [rows]: the reward model's expected value of the target policy at that request and
    position, sum_a p_new(a) q_hat(a). The direct-method term qt carries the estimate, the weighted
    residual corrects the model's error: unbiased when either the propensities or the model is right,
    and the better the model, the smaller the residuals and the narrower the interval.
    """
    ql = _model_column(q_logged, "q_logged", log.n_rows)
    qt = _model_column(q_target, "q_target", log.n_rows)
    w = log.weights(config.clip)
    return _estimate("dr", log, config, np.stack([qt + w * (log.reward - ql)]), _per_request_mean)


def support(log: LoggedSlates, config: OPEConfig = DEFAULTS) -> Support:
    """Per position: the share of the target's mass the log supports, matched rows, and ESS.

    Weights are not clipped here: clipping would hide the mass this measures. Warns where the ESS is
    below ``config.min_ess`` or where ``supported_mass`` plus two standard errors is still below
    ``config.min_support``.
    """
    w = log.weights()
    n_pos = len(log.positions)
    n_rows = np.bincount(log.position, minlength=n_pos)
    sum_w, sum_w2 = _weight_sums(log, w)
    mean_w = sum_w / n_rows
    var_w = np.maximum(sum_w2 / n_rows - mean_w**2, 0.0) * n_rows / np.maximum(n_rows - 1, 1)
    se = np.sqrt(var_w / n_rows)
    matched = np.bincount(log.position, weights=(log.p_new > 0).astype(np.float64), minlength=n_pos) / n_rows
    ess = _ess(sum_w, sum_w2)
    warnings = list(_ess_warnings(log.positions, ess, None, config.min_ess))
    for pos, mass, err in zip(log.positions.tolist(), mean_w.tolist(), se.tolist(), strict=True):
        if mass + 2 * err < config.min_support:
            warnings.append(
                f"position {pos}: the log supports about {mass:.0%} (+- {2 * err:.0%}) of the target "
                f"policy's mass there (ope.min_support {config.min_support:.0%}); the rest is on items "
                "the logging policy never shows at that position, and no estimator sees their reward"
            )
    return Support(
        positions=log.positions,
        n_rows=n_rows,
        supported_mass=mean_w,
        supported_mass_se=se,
        matched_share=matched,
        ess=ess,
        warnings=tuple(warnings),
    )


# --- shared machinery -------------------------------------------------------------------------------

Finish = Callable[[np.ndarray, int], np.ndarray]
"""(summed statistics [..., S, P], number of requests) -> per-position values [..., P]."""


def _per_request_mean(sums: np.ndarray, n_requests: int) -> np.ndarray:
    return sums[..., 0, :] / n_requests


def _self_normalised(sums: np.ndarray, n_requests: int) -> np.ndarray:
    weighted, weight, count = sums[..., 0, :], sums[..., 1, :], sums[..., 2, :]
    ratio = np.divide(weighted, weight, out=np.zeros_like(weighted), where=weight > 0)
    return ratio * count / n_requests


def _estimate(name: str, log: LoggedSlates, config: OPEConfig, stats: np.ndarray, finish: Finish) -> Estimate:
    """Point estimate and bootstrap from per-request sums of ``stats`` [S, rows], by one formula.

    The point estimate and every resample go through the same ``finish``, so they cannot disagree
    on the formula; a resample is the per-request sums weighted by how often each request was drawn.
    """
    per_request = _per_request_sums(log, stats)  # [N, S, P]
    position_values = finish(per_request.sum(axis=0), log.n_requests)
    replicates = _bootstrap(per_request, finish, config, log.n_requests)  # [B, P]
    alpha = (1.0 - config.confidence) / 2
    lo_hi = np.quantile(replicates.sum(axis=1), [alpha, 1 - alpha])
    position_intervals = np.quantile(replicates, [alpha, 1 - alpha], axis=0).T
    sum_w, sum_w2 = _weight_sums(log, log.weights(config.clip))
    position_ess = _ess(sum_w, sum_w2)
    ess = float(_ess(sum_w.sum(), sum_w2.sum()))
    clipped = 0.0 if config.clip is None else float(np.mean(log.weights() > config.clip))
    return Estimate(
        estimator=name,
        value=float(position_values.sum()),
        interval=(float(lo_hi[0]), float(lo_hi[1])),
        positions=log.positions,
        position_values=position_values,
        position_intervals=position_intervals,
        ess=ess,
        position_ess=position_ess,
        n_rows=log.n_rows,
        n_requests=log.n_requests,
        clipped_share=clipped,
        config=config,
        warnings=tuple(_ess_warnings(log.positions, position_ess, ess, config.min_ess)),
    )


def _per_request_sums(log: LoggedSlates, stats: np.ndarray) -> np.ndarray:
    """[N, S, P] the sum of each statistic over each request's rows at each position."""
    n_stats, n_pos = len(stats), len(log.positions)
    cell, n_cells = log.request * n_pos + log.position, log.n_requests * n_pos
    out = np.empty((log.n_requests, n_stats, n_pos))
    for s in range(n_stats):
        out[:, s, :] = np.bincount(cell, weights=stats[s], minlength=n_cells).reshape(-1, n_pos)
    return out


def _bootstrap(per_request: np.ndarray, finish: Finish, config: OPEConfig, n_requests: int) -> np.ndarray:
    """[B, P] the estimate on B resamples of the requests, drawn with replacement, in chunks.

    A resample's sums are counts @ per_request, counts[b, j] being how often request j was drawn.
    """
    rng = np.random.default_rng(config.seed)
    flat = per_request.reshape(n_requests, -1)
    chunk = max(1, _BOOTSTRAP_CELLS // n_requests)
    out = []
    for start in range(0, config.n_bootstrap, chunk):
        size = min(chunk, config.n_bootstrap - start)
        counts = resample_counts(rng, n_requests, size)
        sums = (counts @ flat).reshape(size, *per_request.shape[1:])
        out.append(finish(sums, n_requests))
    return np.concatenate(out)


def _weight_sums(log: LoggedSlates, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[P] sum of w and of w^2 over each position's rows."""
    n_pos = len(log.positions)
    sum_w = np.bincount(log.position, weights=w, minlength=n_pos)
    return sum_w, np.bincount(log.position, weights=w * w, minlength=n_pos)


def _ess(sum_w: Any, sum_w2: Any) -> np.ndarray:
    """(sum w)^2 / sum w^2; 0 where every weight is 0 (no row the target would show)."""
    sum_w, sum_w2 = np.asarray(sum_w, dtype=np.float64), np.asarray(sum_w2, dtype=np.float64)
    return np.divide(sum_w**2, sum_w2, out=np.zeros_like(sum_w), where=sum_w2 > 0)


def _ess_warnings(positions: np.ndarray, position_ess: np.ndarray, ess: float | None, min_ess: float):
    for pos, value in zip(positions.tolist(), position_ess.tolist(), strict=True):
        if value < min_ess:
            yield (
                f"position {pos}: effective sample size {value:.1f} is below ope.min_ess {min_ess:g}: "
                "too few rows where the target policy would show what the log showed"
            )
    if ess is not None and ess < min_ess:
        yield f"overall: effective sample size {ess:.1f} is below ope.min_ess {min_ess:g}: too few rows"


# --- input checks -----------------------------------------------------------------------------------


def _column(values: Any, name: str) -> np.ndarray:
    out = np.asarray(values)
    if out.ndim != 1:
        raise LogError(f"logged slates: column {name} must be one-dimensional, got shape {out.shape}")
    return out


def _null_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.fromiter((v is None or v != v for v in values.tolist()), dtype=bool, count=len(values))
    return np.zeros(len(values), dtype=bool)


def _floats(values: np.ndarray, name: str) -> np.ndarray:
    try:
        out = values.astype(np.float64)
    except (TypeError, ValueError):
        raise LogError(f"logged slates: column {name} must be numeric, got dtype {values.dtype}") from None
    missing = ~np.isfinite(out)
    if missing.any():
        raise LogError(f"logged slates: column {name} has {int(missing.sum())} missing or infinite values")
    return out


def _check_range(values: np.ndarray, name: str, ok: np.ndarray, allowed: str) -> None:
    if not ok.all():
        bad = values[~ok]
        raise LogError(
            f"logged slates: column {name} has {len(bad)} values not {allowed} "
            f"(e.g. {bad[0]:g}); a probability of showing the item there is expected"
        )


def _positions(values: np.ndarray) -> np.ndarray:
    name = schema.POSITION
    if values.dtype.kind in "iu":
        out = values.astype(np.int64)
    else:
        floats = _floats(values, name)
        fractional = floats != np.round(floats)
        if fractional.any():
            raise LogError(f"logged slates: column {name} has {int(fractional.sum())} non-integer values")
        out = floats.astype(np.int64)
    negative = out < 0
    if negative.any():
        raise LogError(f"logged slates: column {name} has {int(negative.sum())} negative values")
    return out


def _model_column(values: Any, name: str, n_rows: int) -> np.ndarray:
    out = _floats(_column(values, name), name)
    if len(out) != n_rows:
        raise LogError(f"doubly robust: {name} has {len(out)} values for {n_rows} logged rows")
    return out


def estimate_all(
    log: LoggedSlates, q_logged: np.ndarray, q_target: np.ndarray, config: OPEConfig = DEFAULTS
) -> dict[str, Estimate]:
    """Every estimator of ``schema.OPE_ESTIMATORS``, by that name: the one dispatch from a name to its
    estimator (doubly robust needs the reward model's predictions of the logged and the target items)."""
    found = {
        "ips": lambda: ips(log, config),
        "snips": lambda: snips(log, config),
        "dr": lambda: doubly_robust(log, q_logged, q_target, config),
    }
    if tuple(found) != schema.OPE_ESTIMATORS:
        raise AssertionError(f"estimators {tuple(found)} differ from schema.OPE_ESTIMATORS {schema.OPE_ESTIMATORS}")
    return {name: estimate() for name, estimate in found.items()}
