"""Power-law fits with standard errors.

`fit_power_law(x, y)` is ordinary least squares of log y on log x (PAPER.md §3), the fit the
paper uses for I_BP(L) ~ A·L^β. With `offset=True` it fits y = A·x^b + C with C in
(0, min y), minimising the squared log-residuals Σ (log(y − C) − log A − b log x)² — the
bias-corrected fit of two-point MI, where C absorbs the estimator's positive bias.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import optimize


class PowerLawFit(NamedTuple):
    """y ≈ amplitude · x**exponent + offset.

    Attributes:
      amplitude: A.
      exponent: b (negative for a decay; the decay exponent α of I_TP is −b).
      exponent_stderr: standard error of b from the residuals of the log-space fit
        (with `offset=True`, from the full three-parameter covariance, so the uncertainty of
        C is included).
      offset: C (0.0 for a plain power law).
      residual_std: standard deviation of the log-space residuals.
    """

    amplitude: float
    exponent: float
    exponent_stderr: float
    offset: float = 0.0
    residual_std: float = 0.0

    def __call__(self, x):
        return self.amplitude * np.asarray(x, np.float64) ** self.exponent + self.offset


def _check(x, y, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if x.size < min_points:
        raise ValueError(
            f"a power-law fit with a standard error needs at least {min_points} points, "
            f"got {x.size}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite (a NaN or inf reached the fit)")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError(
            "a log-log power-law fit needs x > 0 and y > 0; "
            f"got min x = {x.min():.3g}, min y = {y.min():.3g}"
        )
    if np.unique(x).size < 2:
        raise ValueError("x must take at least two distinct values")
    return x, y


def _ols(u: np.ndarray, v: np.ndarray) -> tuple[float, float, float, float]:
    """OLS of v on u: (intercept, slope, slope stderr, residual std)."""
    n = u.size
    du = u - u.mean()
    sxx = float(du @ du)
    slope = float(du @ (v - v.mean()) / sxx)
    intercept = float(v.mean() - slope * u.mean())
    resid = v - intercept - slope * u
    s2 = float(resid @ resid) / (n - 2)
    return intercept, slope, float(np.sqrt(s2 / sxx)), float(np.sqrt(s2))


def fit_power_law(x, y, offset: bool = False) -> PowerLawFit:
    """Fits y = A·x^b (+ C) in log-log space; returns A, b, the stderr of b, and C.

    Args:
      x, y: positive, finite 1-D arrays of equal length (at least 3 points; 4 with offset).
      offset: also fit a constant C in (0, min y) (the bias-corrected two-point fit).
    """
    if not offset:
        x, y = _check(x, y, 3)
        intercept, slope, se, rstd = _ols(np.log(x), np.log(y))
        return PowerLawFit(float(np.exp(intercept)), slope, se, 0.0, rstd)

    x, y = _check(x, y, 4)
    lx, ymin = np.log(x), float(y.min())

    def ssr(c: float) -> float:
        _, _, _, rstd = _ols(lx, np.log(y - c))
        return rstd

    # The residual is smooth in C on (0, min y) and blows up as C → min y; a bounded
    # scalar search after a coarse grid finds the global minimum of this 1-D problem.
    grid = ymin * (1.0 - np.geomspace(1.0, 1e-6, 60))
    grid = grid[(grid >= 0) & (grid < ymin)]
    best = grid[int(np.argmin([ssr(c) for c in grid]))]
    lo = max(0.0, best - 0.05 * ymin)
    hi = min(ymin * (1 - 1e-9), best + 0.05 * ymin)
    c = (
        float(optimize.minimize_scalar(ssr, bounds=(lo, hi), method="bounded").x)
        if hi > lo
        else best
    )
    c = min(max(c, 0.0), ymin * (1 - 1e-9))
    intercept, slope, _, _ = _ols(lx, np.log(y - c))

    # Stderr of b from the three-parameter Gauss-Newton covariance in log space.
    resid = np.log(y - c) - intercept - slope * lx
    jac = np.stack([np.ones_like(lx), lx, 1.0 / (y - c)], axis=1)
    s2 = float(resid @ resid) / (x.size - 3)
    cov = s2 * np.linalg.pinv(jac.T @ jac)
    return PowerLawFit(
        float(np.exp(intercept)), slope, float(np.sqrt(max(cov[1, 1], 0.0))), c, float(np.sqrt(s2))
    )


class BootstrapInterval(NamedTuple):
    """Percentile interval of a fitted exponent under resampling of independent units.

    Attributes:
      low, high: the (1 ± confidence)/2 quantiles of the resampled exponents.
      std: their standard deviation.
      resamples: resamples that could be fitted.
      failed: resamples whose mean had a value ≤ 0 (no log-log fit), left out.
    """

    low: float
    high: float
    std: float
    resamples: int
    failed: int


def bootstrap_power_law(
    x,
    y_NxX,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    offset: bool = False,
) -> BootstrapInterval:
    """Bootstrap interval of the exponent of `fit_power_law(x, y_NxX.mean(0))`.

    Each resample draws the N rows of `y_NxX` (one per independent unit, e.g. a document;
    one column per x) with replacement and refits the power law to the resampled means.

    Args:
      x: [X] positive abscissae.
      y_NxX: [N, X] per-unit values (N ≥ 2) whose means over units are fitted.
      resamples: number of resamples (≥ 2).
      confidence: level of the percentile interval, in (0, 1).
      seed: seeds the resampling.
      offset: passed to `fit_power_law`.
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y_NxX, np.float64)
    if y.ndim != 2 or y.shape[1] != x.size or y.shape[0] < 2:
        raise ValueError(f"y_NxX must be [N ≥ 2 units, X = {x.size} points], got shape {y.shape}")
    if not isinstance(resamples, (int, np.integer)) or resamples < 2:
        raise ValueError(f"resamples must be an integer ≥ 2, got {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = y.shape[0]
    weights_RxN = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), resamples)
    means_RxX = weights_RxN @ y / n
    ok = np.all(means_RxX > 0, axis=1)
    if ok.sum() < 2:
        raise ValueError("the resampled means have values ≤ 0; a log-log fit does not apply")
    exps = np.array([fit_power_law(x, m, offset=offset).exponent for m in means_RxX[ok]])
    tail = 0.5 * (1.0 - confidence)
    low, high = np.quantile(exps, [tail, 1.0 - tail])
    return BootstrapInterval(
        float(low), float(high), float(exps.std(ddof=1)), int(ok.sum()), int((~ok).sum())
    )


# ---------------------------------------------------------------- offset-fit profile over C


class OffsetProfile(NamedTuple):
    """The offset fit y = A·x^b + C profiled over C: (A, b) by least squares at each C.

    Attributes:
      offsets: [G] the grid of C over [0, min y), denser towards min y.
      residual_std: [G] standard deviation of the log-space residuals at each C (three
        parameters: the sum of squares over n − 3).
      exponents: [G] the fitted b at each C.
      minima: every local minimum of the residual over C, refined, as `PowerLawFit`s with
        the three-parameter stderr of b; ascending in C. C = 0 counts when the residual
        rises from it.
      chosen: index into `minima` of the fit `fit_power_law(x, y, offset=True)` returns.
    """

    offsets: np.ndarray
    residual_std: np.ndarray
    exponents: np.ndarray
    minima: tuple[PowerLawFit, ...]
    chosen: int


def _fit_at_offset(lx: np.ndarray, y: np.ndarray, c: float) -> PowerLawFit:
    """A, b by OLS of log(y − C) on log x at a fixed C; stderr of b from the three-parameter
    Gauss–Newton covariance (C free), as `fit_power_law(offset=True)` reports it."""
    intercept, slope, _, _ = _ols(lx, np.log(y - c))
    resid = np.log(y - c) - intercept - slope * lx
    jac = np.stack([np.ones_like(lx), lx, 1.0 / (y - c)], axis=1)
    s2 = float(resid @ resid) / (lx.size - 3)
    cov = s2 * np.linalg.pinv(jac.T @ jac)
    return PowerLawFit(
        float(np.exp(intercept)), slope, float(np.sqrt(max(cov[1, 1], 0.0))), c, float(np.sqrt(s2))
    )


def offset_profile(x, y, *, points: int = 241) -> OffsetProfile:
    """Profiles the offset fit over C in [0, min y) and finds every local minimum.

    The residual of y = A·x^b + C in log space is often bimodal in C on biased two-point
    estimates: one minimum near C = 0 (a shallow power law through everything) and one as
    C → min y (a steep one through the few points above the floor). `fit_power_law(...,
    offset=True)` returns one of them; this shows both, and which one it returned.

    Args:
      x, y: positive, finite 1-D arrays of equal length (at least 4 points).
      points: grid size over C (≥ 16): half uniform on [0, min y), half geometric towards
        min y (down to 1e-7·min y from it).
    """
    x, y = _check(x, y, 4)
    if not isinstance(points, (int, np.integer)) or points < 16:
        raise ValueError(f"points must be an integer ≥ 16, got {points!r}")
    lx, ymin = np.log(x), float(y.min())
    grid = np.union1d(
        np.linspace(0.0, ymin, points // 2, endpoint=False),
        ymin * (1.0 - np.geomspace(0.5, 1e-7, points - points // 2)),
    )
    grid = grid[np.concatenate([[True], np.diff(grid) > 1e-12 * ymin])]  # the halves meet

    dof = math.sqrt((x.size - 2) / (x.size - 3))  # three parameters, as in `_fit_at_offset`

    def rstd(c: float) -> float:
        return _ols(lx, np.log(y - c))[3] * dof

    resid = np.array([rstd(c) for c in grid])
    slopes = np.array([_ols(lx, np.log(y - c))[1] for c in grid])
    minima = []
    for i in range(grid.size):
        left = resid[i - 1] if i else np.inf
        right = resid[i + 1] if i + 1 < grid.size else np.inf
        if resid[i] <= left and resid[i] < right:
            lo = grid[i - 1] if i else grid[0]
            hi = grid[i + 1] if i + 1 < grid.size else grid[i]
            c = grid[i]
            if hi > lo:
                found = optimize.minimize_scalar(
                    rstd, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10 * ymin}
                )
                c = float(found.x) if found.fun <= resid[i] else c
            minima.append(_fit_at_offset(lx, y, c))
    returned = fit_power_law(x, y, offset=True).offset
    chosen = int(np.argmin([abs(m.offset - returned) for m in minima]))
    return OffsetProfile(grid, resid, slopes, tuple(minima), chosen)
