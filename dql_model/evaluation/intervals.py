"""Confidence intervals of a mean: the one place that says how sure a figure is.

Every table that puts an interval beside a mean (offline metrics over users, simulated returns over
seeds, the shop loop's days, paired differences) uses ``MeanInterval.of``: Student's t at 95 % with
n - 1 degrees of freedom, which over more than 30 values is the normal approximation's 1.96. The
off-policy estimators (``dql_model.evaluation.ope``) resample whole requests instead, because their
values are ratios of sums over a request's slots; ``resample_counts`` is the draw they use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
"""Two-sided 95 % Student t quantiles for 1..30 degrees of freedom (Z_95 beyond)."""
Z_95 = 1.96
"""The two-sided 95 % normal quantile, as t tables print it beyond 30 degrees of freedom."""


def t_quantile(dof: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``dof`` degrees of freedom."""
    return T_975[dof - 1] if dof <= len(T_975) else Z_95


@dataclass(frozen=True)
class MeanInterval:
    """A mean, its standard deviation over the values, and its 95 % interval."""

    mean: float
    sd: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @classmethod
    def of(cls, values) -> MeanInterval:
        """Student t at 95 %; NaN bounds with fewer than two values."""
        values = np.asarray(values, dtype=np.float64)
        n = len(values)
        mean = float(values.mean()) if n else float("nan")
        sd = float(values.std(ddof=1)) if n > 1 else float("nan")
        half = t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
        return cls(mean=mean, sd=sd, low=mean - half, high=mean + half, n=n)

    def as_dict(self) -> dict[str, float]:
        """mean, low, high: the form the offline tables and their JSON use."""
        return {"mean": self.mean, "low": self.low, "high": self.high}


def mean_ci(values) -> dict[str, float]:
    """``MeanInterval.of`` as the dict the simulated-value and shop-loop JSON use: mean, sd, ci95 (the
    half width), low, high, n."""
    found = MeanInterval.of(values)
    return {
        "mean": found.mean, "sd": found.sd, "ci95": found.half_width, "low": found.low, "high": found.high,
        "n": found.n,
    }  # fmt: skip


def resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """[size, n] float64: how often each of ``n`` units is drawn in each of ``size`` bootstrap resamples
    (n draws with replacement each); a resample's sum of per-unit values is then ``counts @ values``."""
    draws = rng.integers(0, n, size=(size, n))
    draws += (np.arange(size) * n)[:, None]
    counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)
    return counts.astype(np.float64)  # a float matmul runs on BLAS; an int64 one does not
