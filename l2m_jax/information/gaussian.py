"""Exact mutual information of jointly Gaussian variables, from float64 log-determinants.

I(Z_:s ; Z_s:) = ½ (log|Σ_AA| + log|Σ_BB| − log|Σ|). Determinants underflow at the sizes we
use, so everything goes through Cholesky factors: log|Σ_:m,:m| = 2 Σ_{i<m} log L_ii for every
leading block at once, and the trailing blocks come from the factor of the reversed matrix.
One pair of factorisations therefore gives the MI at every split.
"""

from __future__ import annotations

import numpy as np


def cholesky(cov, name: str = "cov", *, check_symmetric: bool = True) -> np.ndarray:
    """Lower Cholesky factor in float64; a ValueError if `cov` is not symmetric PD."""
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ValueError(f"{name} has non-finite entries")
    scale = max(float(np.abs(cov).max()), 1e-300)
    if check_symmetric and not np.allclose(cov, cov.T, rtol=0.0, atol=1e-10 * scale):
        raise ValueError(f"{name} must be symmetric")
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"{name} is not positive definite (Cholesky failed); "
            "a covariance needs all eigenvalues > 0"
        ) from None


def prefix_logdets(chol: np.ndarray) -> np.ndarray:
    """log|Σ[:m, :m]| for m = 0..L from the Cholesky factor of Σ (entry 0 is 0)."""
    return np.concatenate([[0.0], np.cumsum(2.0 * np.log(np.diag(chol)))])


def bipartite_logdets(cov, chol=None) -> tuple[np.ndarray, np.ndarray]:
    """(leading, trailing): log-dets of Σ[:m, :m] and Σ[L−m:, L−m:] for m = 0..L.

    `chol`, if given, is the Cholesky factor of `cov` (saves one factorisation).
    """
    cov = np.asarray(cov, dtype=np.float64)
    lead = prefix_logdets(cholesky(cov) if chol is None else chol)
    trail = prefix_logdets(cholesky(cov[::-1, ::-1], check_symmetric=False))
    return lead, trail


def _check_splits(split, length: int) -> np.ndarray:
    s = np.asarray(split)
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"split must be an integer or integers, got {split!r}")
    if np.any(s < 1) or np.any(s > length - 1):
        raise ValueError(
            f"split must lie in 1..{length - 1} (both blocks non-empty) for a covariance of "
            f"size {length}; got {split!r}"
        )
    return s


def gaussian_mi(cov, split):
    """Exact I(Z_:split ; Z_split:) in nats of a zero-mean Gaussian with covariance `cov`.

    Args:
      cov: [L, L] symmetric positive-definite covariance (converted to float64).
      split: an int in 1..L−1, or an array of them (all splits cost two factorisations).

    Returns:
      A float for an int split, else a float64 array shaped like `split`.
    """
    cov = np.asarray(cov, dtype=np.float64)
    lead, trail = bipartite_logdets(cov)
    length = cov.shape[0]
    s = _check_splits(split, length)
    mi = 0.5 * (lead[s] + trail[length - s] - lead[length])
    return float(mi) if mi.ndim == 0 else mi
