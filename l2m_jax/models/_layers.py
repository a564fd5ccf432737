"""Small pieces every architecture shares: norms, initialisers, input checks, positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "pallas")
HEADS = ("tokens", "gaussian")
DTYPES = ("float32", "bfloat16")


def normal(key, shape, std):
    return std * jax.random.normal(key, shape, jnp.float32)


def uniform(key, shape, bound):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def bc(v, like):
    """`v` with leading axes added to match `like`'s rank (explicit rank promotion)."""
    return jax.lax.broadcast_to_rank(v, like.ndim)


def dense(x, w, b=None, dtype="float32", out_dtype=None):
    """x @ w (+ b), w laid out [in, out]: operands in `dtype`, accumulated (and the bias added)
    in float32, returned in `out_dtype` (default `dtype`). With "bfloat16" the matmul runs at
    bf16 speed and its output is a bf16 activation; parameters stay float32."""
    y = jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    y = y if b is None else y + bc(b.astype(jnp.float32), y)
    return y.astype(dtype if out_dtype is None else out_dtype)


def layer_norm(x_BxLxD, scale_D, bias_D, eps):
    """LayerNorm with float32 statistics; returns x's dtype."""
    x = x_BxLxD.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps) * bc(scale_D, x) + bc(bias_D, x)
    return y.astype(x_BxLxD.dtype)


def rms_norm(x_BxLxD, scale_D, eps):
    """RMSNorm with float32 statistics; returns x's dtype."""
    x = x_BxLxD.astype(jnp.float32)
    ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(ms + eps) * bc(scale_D, x)).astype(x_BxLxD.dtype)


def check_positive(name: str, value, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_common(config, implementations=IMPLEMENTATIONS) -> None:
    """Validates the fields every config shares (vocabulary, head, positions, kernels)."""
    name = type(config).__name__
    check_positive(f"{name}.vocab_size", config.vocab_size)
    check_positive(f"{name}.d_model", config.d_model)
    check_positive(f"{name}.n_layers", config.n_layers)
    check_positive(f"{name}.channels", config.channels)
    if config.max_positions is not None:
        check_positive(f"{name}.max_positions", config.max_positions, minimum=0)
    if config.head not in HEADS:
        raise ValueError(f"{name}.head must be one of {HEADS}, got {config.head!r}")
    if not 0 <= config.bos_id < config.vocab_size:
        raise ValueError(
            f"{name}.bos_id={config.bos_id} is outside the vocabulary [0, {config.vocab_size})"
        )
    if config.implementation not in implementations:
        raise ValueError(
            f"{name}.implementation must be one of {implementations}, got {config.implementation!r}"
        )
    if config.dtype not in DTYPES:
        raise ValueError(f"{name}.dtype must be one of {DTYPES}, got {config.dtype!r}")
    for flag in ("interpret", "remat"):
        if not isinstance(getattr(config, flag), bool):
            raise TypeError(f"{name}.{flag} must be a bool, got {getattr(config, flag)!r}")
    if not config.norm_eps > 0:
        raise ValueError(f"{name}.norm_eps must be positive, got {config.norm_eps!r}")


def concrete(x):
    """x as a NumPy array when its value is known (not traced under jit), else None."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_lengths_fit(lengths_B, new: int, capacity: int | None, what: str) -> None:
    """Raises if concrete `lengths + new` passes `capacity` (no-op on traced lengths)."""
    if capacity is None:
        return
    lengths = concrete(lengths_B)
    if lengths is not None and lengths.size and int(lengths.max()) + new > capacity:
        raise ValueError(
            f"decoding past the {what}: a sequence has {int(lengths.max())} positions and "
            f"{new} more would exceed {capacity}; allocate a larger cache "
            "(init_cache(..., max_len=...)) or raise max_positions"
        )


def overflow_to_nan(out_BxF, lengths_B, new: int, capacity: int | None):
    """Under jit, sequences that pass `capacity` get NaN outputs instead of silent garbage."""
    if capacity is None:
        return out_BxF
    bad_B = lengths_B + new > capacity
    bad = bad_B.reshape(bad_B.shape + (1,) * (out_BxF.ndim - 1))
    return jnp.where(bad, jnp.nan, out_BxF)
