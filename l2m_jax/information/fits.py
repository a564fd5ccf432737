"""Power-law fits with standard errors and document bootstraps.

`fit_power_law(x, y)` is ordinary least squares of log y on log x (PAPER.md §3), the fit the
paper uses for I_BP(L) ~ A·L^β. With `offset=True` it fits y = A·x^b + C with C in
(0, min y), minimising the squared log-residuals Σ (log(y − C) − log A − b log x)² — the
bias-corrected fit of two-point MI, where C absorbs the estimator's positive bias.

With `y_stderr` (the standard error of each y, e.g. a mean over documents) the log-space fit
is weighted: point i has weight 1/s_i² with s_i = σ_i/ŷ_i, the delta-method standard error of
log y_i taken at the fitted value ŷ_i (iterated to a fixed point; weights from the observed
y_i would favour points that fluctuate high). A point with signal-to-noise below 1 then
counts for little instead of steering the fit. The exponent's standard error is
sqrt((UᵀWU)⁻¹) with known variances, scaled by sqrt(χ²/dof) when that exceeds 1 (the points
scatter more than their errors allow, e.g. the curve is not a power law: the Birge ratio);
`chi2`/`dof` show how well a power law fits.

`bootstrap_power_law` refits resamples of independent units (documents) and applies the same
rule choosing the points in every resample; resamples the rule leaves without a fit are
counted, never dropped silently.

`fit_hilberg` fits an entropy-by-context curve h(t) = h∞ + A·t^(β−1) (Hilberg's law) by
weighted least squares in linear space, profiling the exponent. `offset_profile` shows the
offset fit's residual over C with every local minimum.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import optimize

__all__ = [
    "BootstrapInterval",
    "HilbergFit",
    "OffsetProfile",
    "PowerLawFit",
    "bootstrap_hilberg",
    "bootstrap_power_law",
    "fit_hilberg",
    "fit_power_law",
    "offset_profile",
]


class PowerLawFit(NamedTuple):
    """y ≈ amplitude · x**exponent + offset.

    Attributes:
      amplitude: A.
      exponent: b (negative for a decay; the decay exponent α of I_TP is −b).
      exponent_stderr: standard error of b: from the residuals of the log-space fit (with
        `offset=True`, from the full three-parameter covariance, so the uncertainty of C is
        included); with `y_stderr`, from the known variances, sqrt((UᵀWU)⁻¹), times
        sqrt(χ²/dof) when that exceeds 1.
      offset: C (0.0 for a plain power law).
      residual_std: standard deviation of the log-space residuals.
      chi2: with `y_stderr`, Σ ((log y − log ŷ)/s)² at the fit (≈ dof when a power law
        describes the points within their errors); None for unweighted fits.
      dof: points minus fitted parameters.
    """

    amplitude: float
    exponent: float
    exponent_stderr: float
    offset: float = 0.0
    residual_std: float = 0.0
    chi2: float | None = None
    dof: int | None = None

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


def _check_stderr(y_stderr, size: int) -> np.ndarray:
    s = np.asarray(y_stderr, np.float64).ravel()
    if s.size != size:
        raise ValueError(f"y_stderr must have one entry per point ({size}), got {s.size}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(
            "y_stderr must be finite and > 0 (a zero error gives a point infinite weight); "
            f"got min {s.min():.3g}"
        )
    return s


def _ols(u: np.ndarray, v: np.ndarray) -> tuple[float, float, float, float]:
    """OLS of v on u: (intercept, slope, slope stderr, residual std)."""
    n, u_mean, v_mean = u.size, u.mean(), v.mean()
    du = u - u_mean
    sxx = float(du @ du)
    slope = float(du @ (v - v_mean) / sxx)
    intercept = float(v_mean - slope * u_mean)
    resid = v - intercept - slope * u
    s2 = float(resid @ resid) / (n - 2)
    return intercept, slope, float(np.sqrt(s2 / sxx)), float(np.sqrt(s2))


def _lines(u_X: np.ndarray, v_RxX: np.ndarray, w_RxX: np.ndarray):
    """Weighted line fits v ≈ a + b·u, one per row (weight 0 leaves a point out).

    Returns (a_R, b_R, stderr of b_R from (UᵀWU)⁻¹ with w as inverse variances).
    """
    centre = u_X.mean()
    du = u_X - centre
    s0 = w_RxX.sum(axis=1)
    s1 = w_RxX @ du
    s2 = w_RxX @ (du * du)
    wv = w_RxX * v_RxX
    t0, t1 = wv.sum(axis=1), wv @ du
    det = s0 * s2 - s1 * s1
    b = (s0 * t1 - s1 * t0) / det
    a = (t0 - b * s1) / s0 - b * centre
    return a, b, np.sqrt(s0 / det)


def _weighted_log_fits(u_X, y_RxX, sigma_RxX, use_RxX, *, iterations: int = 200):
    """Weighted log-space power-law fits, one per row, over the points `use_RxX` selects.

    The weight of point i is (ŷ_i/σ_i)², the inverse delta-method variance of log y_i at the
    fitted value, iterated to a fixed point from the observed values. Returns (log A, b,
    stderr of b, chi2, converged) per row; rows need ≥ 2 used points at distinct u.
    """
    log_y = np.log(np.where(use_RxX, y_RxX, 1.0))
    inv_sigma = np.where(use_RxX, 1.0 / np.where(use_RxX, sigma_RxX, 1.0), 0.0)
    a, b, se = _lines(u_X, log_y, (np.where(use_RxX, y_RxX, 0.0) * inv_sigma) ** 2)
    converged = np.zeros(a.shape, bool)
    for _ in range(iterations):
        w = (np.exp(a[:, None] + b[:, None] * u_X) * inv_sigma) ** 2
        a_new, b_new, se = _lines(u_X, log_y, w)
        converged = np.abs(b_new - b) <= 1e-12 * (1.0 + np.abs(b_new))
        a, b = a_new, b_new
        if converged.all():
            break
    w = (np.exp(a[:, None] + b[:, None] * u_X) * inv_sigma) ** 2
    chi2 = np.sum(w * (log_y - a[:, None] - b[:, None] * u_X) ** 2, axis=1)
    return a, b, se, chi2, converged & np.isfinite(b) & np.isfinite(se)


def fit_power_law(x, y, offset: bool = False, *, y_stderr=None) -> PowerLawFit:
    """Fits y = A·x^b (+ C) in log-log space; returns A, b, the stderr of b, and C.

    Args:
      x, y: positive, finite 1-D arrays of equal length (at least 3 points; 4 with offset).
      offset: also fit a constant C in (0, min y) (the bias-corrected two-point fit).
      y_stderr: standard errors of y (finite, > 0): weighted least squares in log space with
        weights (ŷ/σ)² (module docstring). Not combined with `offset` (see `fit_hilberg`
        for a weighted fit with an offset).
    """
    if y_stderr is not None:
        if offset:
            raise ValueError(
                "y_stderr with offset=True is not supported; the weighted fit with an "
                "offset is fit_hilberg (linear space), or drop y_stderr"
            )
        x, y = _check(x, y, 3)
        sigma = _check_stderr(y_stderr, y.size)
        u = np.log(x)
        log_a, b, se, chi2, ok = _weighted_log_fits(
            u, y[None], sigma[None], np.ones((1, y.size), bool)
        )
        if not ok[0]:
            raise ValueError("the weighted power-law fit did not converge (check y_stderr)")
        resid = np.log(y) - log_a[0] - b[0] * u
        birge = math.sqrt(max(1.0, float(chi2[0]) / (y.size - 2)))
        return PowerLawFit(
            float(np.exp(log_a[0])),
            float(b[0]),
            float(se[0]) * birge,
            0.0,
            float(np.sqrt(resid @ resid / (y.size - 2))),
            float(chi2[0]),
            y.size - 2,
        )
    if not offset:
        x, y = _check(x, y, 3)
        intercept, slope, se, rstd = _ols(np.log(x), np.log(y))
        return PowerLawFit(float(np.exp(intercept)), slope, se, 0.0, rstd, None, x.size - 2)

    x, y = _check(x, y, 4)
    lx, ymin = np.log(x), float(y.min())

    def ssr(c: float) -> float:
        _, _, _, rstd = _ols(lx, np.log(y - c))
        return rstd

    # The residual is smooth in C on (0, min y) and blows up as C → min y; a bounded
    # scalar search after a coarse grid finds the global minimum of this 1-D problem.
    grid = ymin * (1.0 - np.geomspace(1.0, 1e-6, 60))
    grid = grid[(grid >= 0) & (grid < ymin)]
    best = grid[int(np.argmin(_offset_grid(lx, y, grid)[1]))]
    lo = max(0.0, best - 0.05 * ymin)
    hi = min(ymin * (1 - 1e-9), best + 0.05 * ymin)
    c = (
        float(optimize.minimize_scalar(ssr, bounds=(lo, hi), method="bounded").x)
        if hi > lo
        else best
    )
    return _fit_at_offset(lx, y, min(max(c, 0.0), ymin * (1 - 1e-9)))


# ---- bootstraps over independent units ---------------------------------------------------


class BootstrapInterval(NamedTuple):
    """Percentile interval of a fitted exponent under resampling of independent units.

    Attributes:
      low, high: the (1 ± confidence)/2 quantiles of the resampled exponents.
      std: their standard deviation.
      resamples: resamples that could be fitted (the interval is over these).
      failed: resamples the rule left without a fit (too few points chosen, no interior
        optimum, or no convergence); counted here, never silently dropped.
    """

    low: float
    high: float
    std: float
    resamples: int
    failed: int


def _check_resampling(resamples, confidence) -> None:
    if not isinstance(resamples, (int, np.integer)) or isinstance(resamples, bool) or resamples < 2:
        raise ValueError(f"resamples must be an integer ≥ 2, got {resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _resample_means(y_NxX, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Means over units and their standard errors in `resamples` bootstrap resamples.

    Each resample draws the N rows of `y_NxX` with replacement. Returns (means_RxX,
    stderr_RxX), the stderr being the resample's std (ddof=1) over √N.
    """
    y = np.asarray(y_NxX, np.float64)
    n = y.shape[0]
    counts_RxN = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), resamples)
    means = counts_RxN @ y / n
    centred = y - y.mean(axis=0)  # second moments about the full-sample mean (no cancellation)
    shift = means - y.mean(axis=0)
    var = (counts_RxN @ (centred * centred) / n - shift * shift) * n / (n - 1)
    return means, np.sqrt(np.maximum(var, 0.0) / n)


def _interval(values: np.ndarray, confidence: float, failed: int, total: int):
    if values.size < 2:
        raise ValueError(
            f"only {values.size} of {total} bootstrap resamples could be fitted; the points "
            "are too noisy or too few for an interval"
        )
    tail = 0.5 * (1.0 - confidence)
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return BootstrapInterval(
        float(low), float(high), float(values.std(ddof=1)), int(values.size), int(failed)
    )


def bootstrap_power_law(
    x,
    y_NxX,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    offset: bool = False,
    weighted: bool = False,
    select=None,
) -> BootstrapInterval:
    """Bootstrap interval of the exponent fitted to the means over units of `y_NxX`.

    Each resample draws the N rows of `y_NxX` (one per independent unit, e.g. a document;
    one column per x) with replacement, chooses its points by the rule below and refits.

    Args:
      x: [X] positive abscissae.
      y_NxX: [N, X] per-unit values (N ≥ 2) whose means over units are fitted.
      resamples: number of resamples (≥ 2).
      confidence: level of the percentile interval, in (0, 1).
      seed: seeds the resampling.
      offset: passed to `fit_power_law` (unweighted only).
      weighted: weight each point by its resample's standard error (`fit_power_law` with
        `y_stderr`).
      select: the rule choosing the points, `select(means_RxX, stderr_RxX) -> bool [R, X]`,
        applied to every resample exactly as to the data; points with a mean ≤ 0 are always
        left out (no logarithm). A resample with fewer than 3 points left (4 with offset)
        counts as failed.
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y_NxX, np.float64)
    if y.ndim != 2 or y.shape[1] != x.size or y.shape[0] < 2:
        raise ValueError(f"y_NxX must be [N ≥ 2 units, X = {x.size} points], got shape {y.shape}")
    _check_resampling(resamples, confidence)
    if not (np.all(np.isfinite(x)) and np.all(x > 0) and np.all(np.isfinite(y))):
        raise ValueError("x must be finite and > 0 and y_NxX finite")
    if weighted and offset:
        raise ValueError("weighted=True with offset=True is not supported; choose one")
    means, stderr = _resample_means(y, resamples, seed)
    use = means > 0
    if weighted:
        use &= stderr > 0
    if select is not None:
        chosen = np.asarray(select(means, stderr), bool)
        if chosen.shape != means.shape:
            raise ValueError(f"select must return a bool array of shape {means.shape}")
        use &= chosen
    need = 4 if offset else 3
    spread = np.where(use, x, -np.inf).max(axis=1) > np.where(use, x, np.inf).min(axis=1)
    ok = (use.sum(axis=1) >= need) & spread  # two distinct x at least
    u = np.log(x)
    if offset:
        exps = []
        for r in np.flatnonzero(ok):
            try:
                exps.append(fit_power_law(x[use[r]], means[r, use[r]], offset=True).exponent)
            except ValueError:
                ok[r] = False
        exps = np.asarray(exps, np.float64)
    elif weighted:
        _, b, _, _, converged = _weighted_log_fits(u, means[ok], stderr[ok], use[ok])
        bad = np.flatnonzero(ok)[~converged]
        ok[bad] = False
        exps = b[converged]
    else:
        _, exps, _ = _lines(u, np.log(np.where(use[ok], means[ok], 1.0)), use[ok].astype(float))
    return _interval(exps, confidence, resamples - int(ok.sum()), resamples)


# ---- Hilberg's law for the entropy-by-context curve ----------------------------------------


class HilbergFit(NamedTuple):
    """h(t) ≈ entropy_rate + amplitude · t^(beta − 1), fitted by weighted least squares.

    Attributes:
      beta, beta_stderr: the exponent β (Hilberg: excess entropy ∝ n^β) and its standard
        error from the three-parameter Gauss–Newton covariance with known variances (it
        treats the points as independent; positions of one document are not, so prefer a
        bootstrap over documents, `bootstrap_hilberg`, for the interval).
      entropy_rate, entropy_rate_stderr: h∞, nats per token.
      amplitude: A.
      chi2, dof: Σ ((h − ĥ)/σ)² at the fit, and points − 3.
      at_boundary: the exponent's best value lies at the edge of the searched range
        β − 1 ∈ [−3, −0.02] (no interior optimum: the fit does not determine β).
    """

    beta: float
    beta_stderr: float
    entropy_rate: float
    entropy_rate_stderr: float
    amplitude: float
    chi2: float
    dof: int
    at_boundary: bool

    def __call__(self, t):
        return self.entropy_rate + self.amplitude * np.asarray(t, np.float64) ** (self.beta - 1)


_DECAY_RANGE = (0.02, 3.0)  # γ = 1 − β searched in this range


def _hilberg_solve(log_t_T, h_RxT, w_RxT, gamma, *, shared: bool):
    """(chi2, h∞, A) for decays γ: [G] shared by every row (results [R, G]), or [R], one
    per row (results [R], with the residuals summed directly for full precision)."""
    s0 = w_RxT.sum(axis=1, keepdims=True)
    wh = w_RxT * h_RxT
    t0 = wh.sum(axis=1, keepdims=True)
    if shared:
        x_TxG = np.exp(-np.outer(log_t_T, gamma))
        s1, s2, t1 = w_RxT @ x_TxG, w_RxT @ (x_TxG * x_TxG), wh @ x_TxG
    else:
        x_RxT = np.exp(-gamma[:, None] * log_t_T[None, :])
        s1 = (w_RxT * x_RxT).sum(axis=1, keepdims=True)
        s2 = (w_RxT * x_RxT * x_RxT).sum(axis=1, keepdims=True)
        t1 = (wh * x_RxT).sum(axis=1, keepdims=True)
    det = s0 * s2 - s1 * s1
    amp = (s0 * t1 - s1 * t0) / det
    rate = (t0 - amp * s1) / s0
    if shared:  # expanded Σ w (h − h∞ − A·x)²: enough to bracket the minimum
        q = (wh * h_RxT).sum(axis=1, keepdims=True)
        chi2 = q - 2 * rate * t0 - 2 * amp * t1 + rate * rate * s0
        return chi2 + 2 * rate * amp * s1 + amp * amp * s2, rate, amp
    resid = h_RxT - rate - amp * x_RxT
    return (w_RxT * resid * resid).sum(axis=1), rate[:, 0], amp[:, 0]


def _hilberg_fits(t_T, h_RxT, sigma_RxT, *, grid: int = 120, iterations: int = 60):
    """Profile fits of h = h∞ + A·t^−γ per row: (γ_R, h∞_R, A_R, chi2_R, interior_R)."""
    log_t = np.log(t_T)
    w = 1.0 / (sigma_RxT * sigma_RxT)
    gammas = np.geomspace(*_DECAY_RANGE, grid)
    chi2_RxG, _, _ = _hilberg_solve(log_t, h_RxT, w, gammas, shared=True)
    k = np.argmin(chi2_RxG, axis=1)
    interior = (k > 0) & (k < grid - 1)
    lo = gammas[np.maximum(k - 1, 0)]
    hi = gammas[np.minimum(k + 1, grid - 1)]
    # Golden-section search inside the bracket around each row's grid minimum.
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc = _hilberg_solve(log_t, h_RxT, w, c, shared=False)[0]
    fd = _hilberg_solve(log_t, h_RxT, w, d, shared=False)[0]
    for _ in range(iterations):
        left = fc < fd
        hi = np.where(left, d, hi)
        lo = np.where(left, lo, c)
        d_new = np.where(left, c, lo + ratio * (hi - lo))
        c_new = np.where(left, hi - ratio * (hi - lo), d)
        c, d = c_new, d_new
        fc = _hilberg_solve(log_t, h_RxT, w, c, shared=False)[0]
        fd = _hilberg_solve(log_t, h_RxT, w, d, shared=False)[0]
    gamma = 0.5 * (lo + hi)
    chi2, rate, amp = _hilberg_solve(log_t, h_RxT, w, gamma, shared=False)
    return gamma, rate, amp, chi2, interior & np.isfinite(chi2)


def _check_curve(t, h, h_stderr):
    t = np.asarray(t, np.float64).ravel()
    h = np.asarray(h, np.float64)
    s = np.asarray(h_stderr, np.float64)
    if t.size < 4:
        raise ValueError(
            f"a Hilberg fit (3 parameters and a stderr) needs ≥ 4 points, got {t.size}"
        )
    if not (np.all(np.isfinite(t)) and np.all(t > 0)) or np.unique(t).size != t.size:
        raise ValueError("t must be distinct, finite positions > 0")
    if h.shape[-1] != t.size or s.shape != h.shape:
        raise ValueError(f"h and h_stderr must have {t.size} entries, got {h.shape}, {s.shape}")
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("h must be finite and h_stderr finite and > 0")
    return t, h, s


def fit_hilberg(t, h, h_stderr) -> HilbergFit:
    """Fits Hilberg's law h(t) = h∞ + A·t^(β−1) to an entropy-by-context curve.

    Weighted least squares in linear space (each h(t) is a mean over documents with
    standard error σ_t): for each decay γ = 1 − β the best (h∞, A) is linear; the profile
    over γ ∈ [0.02, 3] is searched on a grid, then refined by golden sections.

    Args:
      t: [T] positions (e.g. 1-based token positions), distinct and > 0, at least 4.
      h: [T] mean cross-entropy −log q(W_t | W_<t) at each position (nats).
      h_stderr: [T] its standard errors (> 0).
    """
    t, h, s = _check_curve(t, h, h_stderr)
    if h.ndim != 1:
        raise ValueError(f"h must be 1-D, got shape {h.shape}")
    gamma, rate, amp, chi2, interior = _hilberg_fits(t, h[None], s[None])
    g, c, a = float(gamma[0]), float(rate[0]), float(amp[0])
    x = t**-g
    jac = np.stack([np.ones_like(t), x, -a * x * np.log(t)], axis=1)  # ∂/∂(h∞, A, γ)
    cov = np.linalg.pinv(jac.T @ (jac / (s * s)[:, None]))
    return HilbergFit(
        1.0 - g,
        float(np.sqrt(max(cov[2, 2], 0.0))),
        c,
        float(np.sqrt(max(cov[0, 0], 0.0))),
        a,
        float(chi2[0]),
        t.size - 3,
        not bool(interior[0]),
    )


def bootstrap_hilberg(
    t, h_NxT, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> BootstrapInterval:
    """Bootstrap interval of Hilberg's β from per-unit curves `h_NxT` (rows: documents).

    Every resample refits `fit_hilberg` to its means with its own standard errors; a
    resample whose best exponent lies at the edge of the searched range (or has a zero
    standard error at some position) counts as failed.
    """
    _check_resampling(resamples, confidence)
    h = np.asarray(h_NxT, np.float64)
    if h.ndim != 2 or h.shape[0] < 2:
        raise ValueError(f"h_NxT must be [N ≥ 2 units, T positions], got shape {h.shape}")
    t, h, _ = _check_curve(t, h, np.ones_like(h))
    means, stderr = _resample_means(h, resamples, seed)
    ok = np.all(stderr > 0, axis=1)
    gamma, _, _, _, interior = _hilberg_fits(t, means[ok], stderr[ok])
    idx = np.flatnonzero(ok)
    ok[idx[~interior]] = False
    return _interval(1.0 - gamma[interior], confidence, resamples - int(ok.sum()), resamples)


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
    Gauss–Newton covariance in log space (C free), as `fit_power_law(offset=True)` reports."""
    intercept, slope, _, _ = _ols(lx, np.log(y - c))
    resid = np.log(y - c) - intercept - slope * lx
    jac = np.stack([np.ones_like(lx), lx, 1.0 / (y - c)], axis=1)
    s2 = float(resid @ resid) / (lx.size - 3)
    cov = s2 * np.linalg.pinv(jac.T @ jac)
    return PowerLawFit(
        float(np.exp(intercept)),
        slope,
        float(np.sqrt(max(cov[1, 1], 0.0))),
        c,
        float(np.sqrt(s2)),
        None,
        lx.size - 3,
    )


def _offset_grid(lx: np.ndarray, y: np.ndarray, grid: np.ndarray):
    """(slopes, residual stds) of the OLS of log(y − C) on log x at every C of `grid` at
    once (`_ols`, vectorised)."""
    v_GxX = np.log(y[None, :] - grid[:, None])
    du = lx - lx.mean()
    v_mean = v_GxX.mean(axis=1)
    slopes = ((v_GxX - v_mean[:, None]) * du).sum(axis=1) / float((du * du).sum())
    fitted = (v_mean - slopes * lx.mean())[:, None] + slopes[:, None] * lx
    return slopes, np.sqrt(((v_GxX - fitted) ** 2).sum(axis=1) / (lx.size - 2))


def offset_profile(x, y, *, points: int = 241, fit: PowerLawFit | None = None) -> OffsetProfile:
    """Profiles the offset fit over C in [0, min y) and finds every local minimum.

    The residual of y = A·x^b + C in log space is often bimodal in C on biased two-point
    estimates: one minimum near C = 0 (a shallow power law through everything) and one as
    C → min y (a steep one through the few points above the floor). `fit_power_law(...,
    offset=True)` returns one of them; this shows both, and which one it returned.

    Args:
      x, y: positive, finite 1-D arrays of equal length (at least 4 points).
      points: grid size over C (≥ 16): half uniform on [0, min y), half geometric towards
        min y (down to 1e-7·min y from it).
      fit: `fit_power_law(x, y, offset=True)` where already made (else it is made here).
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

    slopes, resid = _offset_grid(lx, y, grid)
    resid *= dof
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
    returned = (fit_power_law(x, y, offset=True) if fit is None else fit).offset
    chosen = int(np.argmin([abs(m.offset - returned) for m in minima]))
    return OffsetProfile(grid, resid, slopes, tuple(minima), chosen)
