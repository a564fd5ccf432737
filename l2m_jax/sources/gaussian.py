"""Hierarchical Gaussian families with exact information (PAPER.md §4).

A family is built in `layers` steps from one standard normal (layer 0). Step l takes `copies`
(k) independent copies of the layer-(l−1) sequence (length n) and b − k fresh iid standard
normal sequences, stacks them as the columns of n rows of width b (b = `branching`), applies
the b×b mixing matrix M to every row and flattens row-major to length b·n. In Kronecker form,
with P = diag(1,…,1,0,…,0) (k ones):

    Σ_l = Σ_{l−1} ⊗ (M P Mᵀ) + I_n ⊗ (M (I − P) Mᵀ)

M = [γ·S | ρ·1] with unit rows: S is b×(b−1) with SSᵀ = b·I − 11ᵀ (for b = 4 the sign pattern
of PAPER.md §4, for other powers of two a Sylvester–Hadamard matrix without its constant
column, otherwise √b times an orthonormal (Helmert) basis of 1^⊥), ρ = `rho` (1/b by
default) and γ = √((1 − ρ²)/(b − 1)). Every position has unit variance.

Row-boundary coupling (our choice; the paper does not pin it): after every step the last
variable u of row i and the first variable v of row i+1 are replaced by
(a·u + c·v, c·u + a·v) with c = `coupling` and a > 0 chosen per boundary so both stay at unit
variance: a² + c² + 2ac·r = 1, r = corr(u, v) before mixing. The pairs are disjoint, so the
coupling is an invertible block-diagonal map (a > |c| is required; it holds for |c| ≲ 0.7).
For c > 0 it raises the correlation across the boundary, which orders adjacent rows linearly
and makes the log-law family's I_BP grow like log L (without it, it is constant).

Families: sub-volume (k = 3 of b = 4: I_BP(L/2; L) ∝ L^{log_4 3 ≈ 0.79}) and log-law (k = 1:
I_BP ∝ log L). Generally the exponent is log_b k. Both have the same antipodal two-point MI.

Each position may carry `channels` independent copies of the sequence, stacked into vector
tokens [B, L, C]; information quantities are totals over channels.

Exact autoregressive conditionals: with Σ = L_c L_cᵀ, p(z_i | z_<i) = N(μ_i, σ_i²) with
σ_i = L_c[i, i] and μ = W z for the strictly lower-triangular W = I − diag(L_c) L_c⁻¹
(the optimal linear predictor), computed once in float64 and applied in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from l2m_jax.information.gaussian import bipartite_logdets, cholesky


class LinearPredictor(NamedTuple):
    """Exact conditionals of a Gaussian sequence: μ = z @ weights_LxL.T, σ = std_L."""

    weights_LxL: np.ndarray  # strictly lower triangular
    std_L: np.ndarray


def conditionals(predictor: LinearPredictor, z_BxLxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and std of p(z_i | z_<i) for every position; a pure, jittable function."""
    mean_BxLxC = jnp.einsum(
        "ij,bjc->bic", predictor.weights_LxL, z_BxLxC, precision=jax.lax.Precision.HIGHEST
    )
    std_BxLxC = jnp.broadcast_to(predictor.std_L[None, :, None], z_BxLxC.shape)
    return mean_BxLxC, std_BxLxC


def _sign_basis(b: int) -> np.ndarray:
    """b×(b−1) matrix S with SSᵀ = b·I − 11ᵀ (columns orthogonal to 1 and each other)."""
    if b == 4:  # the paper's sign pattern (PAPER.md §4)
        return np.array([[1, 1, 1], [-1, 1, -1], [-1, -1, 1], [1, -1, -1]], np.float64)
    if b & (b - 1) == 0:  # Sylvester–Hadamard without its all-ones column
        h = np.ones((1, 1))
        while h.shape[0] < b:
            h = np.block([[h, h], [h, -h]])
        return h[:, 1:]
    # √b × Helmert basis of the complement of 1.
    s = np.zeros((b, b - 1))
    for j in range(1, b):
        s[:j, j - 1] = 1.0
        s[j, j - 1] = -j
        s[:, j - 1] /= math.sqrt(j * (j + 1))
    return s * math.sqrt(b)


def mixing_matrix(branching: int, rho: float) -> np.ndarray:
    """M = [γ·S | ρ·1] with unit rows (float64, [b, b])."""
    gamma = math.sqrt((1.0 - rho**2) / (branching - 1))
    return np.concatenate([gamma * _sign_basis(branching), np.full((branching, 1), rho)], axis=1)


@dataclasses.dataclass(frozen=True)
class GaussianFamily:
    """One member of the hierarchical Gaussian families (see the module docstring).

    Attributes:
      layers: number of hierarchy steps; the length is L = branching**layers.
      channels: independent copies stacked into vector tokens [B, L, C].
      branching: row width b (≥ 2).
      copies: k in 1..b copies of the previous layer per row; I_BP ∝ L^{log_b k} (k ≥ 2).
      coupling: row-boundary coupling c (0 disables it).
      rho: weight of the last column of M (|ρ| < 1); 1/b by default.
      name: a label for tables and plots.
    """

    layers: int
    channels: int = 1
    branching: int = 4
    copies: int = 3
    coupling: float = 0.3
    rho: float | None = None
    name: str = "gaussian"

    def __post_init__(self):
        for field, lo in (("layers", 1), ("channels", 1), ("branching", 2)):
            v = getattr(self, field)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{field} must be an integer ≥ {lo}, got {v!r}")
        if not isinstance(self.copies, (int, np.integer)) or not 1 <= self.copies <= self.branching:
            raise ValueError(
                f"copies must be an integer in 1..branching = 1..{self.branching}, "
                f"got {self.copies!r}"
            )
        if self.rho is None:
            object.__setattr__(self, "rho", 1.0 / self.branching)
        if not -1.0 < self.rho < 1.0:
            raise ValueError(f"rho must lie in (−1, 1) so that M has unit rows; got {self.rho}")
        if not -1.0 < self.coupling < 1.0:
            raise ValueError(f"coupling must lie in (−1, 1), got {self.coupling}")
        if self.length > 2**15:
            raise ValueError(
                f"L = branching**layers = {self.length} is too long for the exact float64 "
                "covariance (at most 32768 positions)"
            )
        # Build the exact covariance now so an invalid coupling fails at construction.
        _ = self._structure

    # ---- structure -------------------------------------------------------------------

    @property
    def length(self) -> int:
        return self.branching**self.layers

    @property
    def exponent(self) -> float:
        """log_b k, the exponent of I_BP(L/2; L) ∝ L^β without coupling (0 for k = 1)."""
        return math.log(self.copies) / math.log(self.branching)

    @functools.cached_property
    def mixing(self) -> np.ndarray:
        return mixing_matrix(self.branching, self.rho)

    @functools.cached_property
    def _structure(self) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """The exact covariance and, per layer, the coupling weights a of its boundaries."""
        b, k, c = self.branching, self.copies, self.coupling
        m = self.mixing
        p = np.diag((np.arange(b) < k).astype(np.float64))
        from_copies = m @ p @ m.T
        from_noise = m @ (np.eye(b) - p) @ m.T
        cov = np.ones((1, 1))
        weights = []
        for _ in range(self.layers):
            n = cov.shape[0]
            cov = np.kron(cov, from_copies) + np.kron(np.eye(n), from_noise)
            u = np.arange(n - 1) * b + b - 1  # last of row i
            v = u + 1  # first of row i + 1
            r = cov[u, v]
            a = -c * r + np.sqrt(1.0 - c**2 * (1.0 - r**2))
            if np.any(a <= abs(c)):
                raise ValueError(
                    f"coupling={c} makes the row-boundary map singular (needs a > |c| at every "
                    "boundary) and the covariance not positive definite; use |coupling| < 0.7"
                )
            cu, cv = cov[u].copy(), cov[v].copy()
            cov[u], cov[v] = a[:, None] * cu + c * cv, c * cu + a[:, None] * cv
            cu, cv = cov[:, u].copy(), cov[:, v].copy()
            cov[:, u], cov[:, v] = cu * a + c * cv, c * cu + cv * a
            weights.append(a)
        return cov, tuple(weights)

    @property
    def cov(self) -> np.ndarray:
        """Exact covariance of one channel, float64 [L, L] (unit diagonal)."""
        return self._structure[0]

    @functools.cached_property
    def _cholesky(self) -> np.ndarray:
        # Symmetric by construction; only positive definiteness is checked.
        return cholesky(self.cov, "the family's covariance", check_symmetric=False)

    @functools.cached_property
    def _logdets(self) -> tuple[np.ndarray, np.ndarray]:
        return bipartite_logdets(self.cov, self._cholesky)

    # ---- exact information (totals over channels, nats) ------------------------------

    def bipartite_mi(self, ell):
        """I(Z_1:ℓ ; Z_ℓ+1:L), summed over channels; ℓ an int or array in 1..L−1."""
        lead, trail = self._logdets
        L = self.length
        s = np.asarray(ell)
        if not np.issubdtype(s.dtype, np.integer) or np.any(s < 1) or np.any(s > L - 1):
            raise ValueError(f"ell must be integers in 1..L−1 = 1..{L - 1}, got {ell!r}")
        mi = 0.5 * self.channels * (lead[s] + trail[L - s] - lead[L])
        return float(mi) if mi.ndim == 0 else mi

    def two_point_mi(self, i, j):
        """I(Z_i ; Z_j) for positions i ≠ j (0-based), summed over channels."""
        i, j = np.asarray(i), np.asarray(j)
        L = self.length
        if np.any(i < 0) or np.any(j < 0) or np.any(i >= L) or np.any(j >= L) or np.any(i == j):
            raise ValueError(f"i and j must be distinct positions in 0..{L - 1}")
        r = self.cov[i, j]
        mi = -0.5 * self.channels * np.log1p(-(r**2))
        return float(mi) if mi.ndim == 0 else mi

    def entropy(self) -> float:
        """Joint differential entropy ½ log det(2πe Σ), summed over channels."""
        lead, _ = self._logdets
        return 0.5 * self.channels * (self.length * math.log(2 * math.pi * math.e) + lead[-1])

    # ---- conditionals -----------------------------------------------------------------

    def linear_predictor(self, dtype=jnp.float32) -> LinearPredictor:
        """Exact linear predictor in `dtype` (float64 math; float64 output needs x64)."""
        chol = self._cholesky
        d = np.diag(chol)
        w = np.tril(np.eye(self.length) - d[:, None] * np.linalg.inv(chol), -1)
        # NumPy arrays, so a first use inside a jit trace caches constants, not tracers.
        dtype = np.dtype(dtype)
        return LinearPredictor(w.astype(dtype), d.astype(dtype))

    @functools.cached_property
    def predictor(self) -> LinearPredictor:
        """The float32 exact linear predictor; pass it through jit as an argument."""
        return self.linear_predictor(jnp.float32)

    def conditionals(self, z_BxLxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean, std) of p(z_i | z_<i), each [B, L, C]; input without the BOS token."""
        z_BxLxC = jnp.asarray(z_BxLxC)
        if z_BxLxC.ndim != 3 or z_BxLxC.shape[1:] != (self.length, self.channels):
            raise ValueError(
                f"z must have shape [B, L={self.length}, C={self.channels}] (no BOS token), "
                f"got {z_BxLxC.shape}"
            )
        return conditionals(self.predictor, z_BxLxC)

    # ---- sampling ---------------------------------------------------------------------

    @functools.cached_property
    def _sampler(self):
        b, k, c = self.branching, self.copies, self.coupling
        m = self.mixing.astype(np.float32)  # NumPy constants (safe to build inside a trace)
        weights = [a.astype(np.float32) for a in self._structure[1]]

        def draw(key, batch_shape: tuple[int, ...]) -> jax.Array:
            # z = T ε applied layer by layer: O(L) work and memory per sample.
            keys = jax.random.split(key, self.layers + 1)
            # Layer 0 for every copy that the top layer needs: k**layers leaves.
            z = jax.random.normal(keys[0], (*batch_shape, *([k] * self.layers), 1))
            for layer in range(self.layers):
                n = z.shape[-1]
                copies = z  # [..., k, n]: the innermost copy axis holds the k copies
                lead = copies.shape[:-2]
                noise = jax.random.normal(keys[layer + 1], (*lead, b - k, n))
                rows = jnp.concatenate([copies, noise], axis=-2)  # [..., b, n]
                z = jnp.einsum("jc,...cn->...nj", m, rows).reshape(*lead, n * b)
                if n > 1:
                    u, v = z[..., b - 1 : n * b - 1 : b], z[..., b::b]
                    a = weights[layer].reshape((1,) * (u.ndim - 1) + (n - 1,))
                    z = z.at[..., b - 1 : n * b - 1 : b].set(a * u + c * v)
                    z = z.at[..., b::b].set(c * u + a * v)
            return z

        @functools.partial(jax.jit, static_argnames=("batch", "bos"))
        def sample(key, batch: int, bos: bool = False):
            z_BxCxL = draw(key, (batch, self.channels))
            z_BxLxC = jnp.swapaxes(z_BxCxL, 1, 2)
            if bos:
                z_BxLxC = jnp.pad(z_BxLxC, ((0, 0), (1, 0), (0, 0)))
            return z_BxLxC

        return sample

    def sample(self, key: jax.Array, batch: int, *, bos: bool = False) -> jax.Array:
        """Draws `batch` sequences, float32 [B, L, C] (with bos: [B, L+1, C], zeros first)."""
        if not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        return self._sampler(key, batch=int(batch), bos=bool(bos))

    def dense_sample(self, key: jax.Array, batch: int) -> jax.Array:
        """Baseline sampler through the dense L×L Cholesky factor (benchmarks and tests)."""
        return _dense_sample(self._cholesky.astype(np.float32), key, batch, self.channels)


@functools.partial(jax.jit, static_argnames=("batch", "channels"))
def _dense_sample(chol_LxL, key, batch: int, channels: int) -> jax.Array:
    eps_BxLxC = jax.random.normal(key, (batch, chol_LxL.shape[0], channels))
    return jnp.einsum("ij,bjc->bic", chol_LxL, eps_BxLxC)


@functools.lru_cache(maxsize=8)
def _family(
    name: str,
    copies: int,
    layers: int,
    channels: int,
    branching: int,
    coupling: float,
    rho: float | None,
) -> GaussianFamily:
    return GaussianFamily(
        layers=layers,
        channels=channels,
        branching=branching,
        copies=copies,
        coupling=coupling,
        rho=rho,
        name=name,
    )


def subvolume_gaussian(
    layers: int,
    channels: int = 1,
    *,
    branching: int = 4,
    copies: int = 3,
    coupling: float = 0.3,
    rho: float | None = None,
) -> GaussianFamily:
    """The sub-volume family: I_BP(L/2; L) ∝ L^β, β = log_b k (≈ 0.79 for b=4, k=3)."""
    return _family("subvolume", copies, layers, channels, branching, coupling, rho)


def log_gaussian(
    layers: int,
    channels: int = 1,
    *,
    branching: int = 4,
    copies: int = 1,
    coupling: float = 0.3,
    rho: float | None = None,
) -> GaussianFamily:
    """The log-law family: one copy per row, I_BP(L/2; L) ∝ log L (with coupling)."""
    return _family("log", copies, layers, channels, branching, coupling, rho)
