"""Inputs and outputs of every architecture: token or Gaussian-vector heads, positions.

`config.head == "tokens"`: int32 tokens [B, L] are embedded with `embed/tokens` [V, D]; the
output is logits [B, L, V] through the same matrix (tied) or `head/unembed` [D, V].

`config.head == "gaussian"` (PAPER.md §6): a float32 vector [B, L, C] per position is embedded
by a 2-layer MLP (C -> D -> D, GELU between), and a 2-layer MLP head (D -> D -> 2C) gives the
conditional means and standard deviations of the next vector:
`std = softplus(raw) + STD_FLOOR` (smooth, never below the floor; the exact conditional stds
of the Gaussian families are 0.5-1, far above it). The output is a `GaussianPrediction`.

Learned absolute positions `positions` [P, D] are added to the embedding when the config's
`num_positions` P > 0 (PAPER.md §7: Gaussian models need the position).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from l2m_jax.models import _layers

__all__ = ["STD_FLOOR", "GaussianPrediction"]

STD_FLOOR = 1e-3
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)  # softplus(x) = 1 at this x


class GaussianPrediction(NamedTuple):
    """Conditional p(z_{t+1} | z_<=t) = N(mean, std²) per channel; both [..., C] float32."""

    mean: jax.Array
    std: jax.Array


def init(config, key, *, embed_std: float = 0.02) -> dict:
    """Input/output parameters: {"embed": ..., "positions"?: [P, D], "head"?: ...}."""
    D, C, V = config.d_model, config.channels, config.vocab_size
    k_embed, k_pos, k_h1, k_h2, k_e2 = jax.random.split(key, 5)
    params: dict = {}
    if config.head == "tokens":
        params["embed"] = {"tokens": _layers.normal(k_embed, (V, D), embed_std)}
        if not config.tie_embeddings:
            params["head"] = {"unembed": _layers.normal(k_h1, (D, V), embed_std)}
    else:
        params["embed"] = {
            "w1": _layers.normal(k_embed, (C, D), 1.0 / math.sqrt(C)),
            "b1": jnp.zeros((D,), jnp.float32),
            "w2": _layers.normal(k_e2, (D, D), 1.0 / math.sqrt(D)),
            "b2": jnp.zeros((D,), jnp.float32),
        }
        params["head"] = {
            "w1": _layers.normal(k_h1, (D, D), 1.0 / math.sqrt(D)),
            "b1": jnp.zeros((D,), jnp.float32),
            "w2": _layers.normal(k_h2, (D, 2 * C), 0.02),
            "b2": jnp.concatenate(
                [jnp.zeros((C,), jnp.float32), jnp.full((C,), _SOFTPLUS_INV_1, jnp.float32)]
            ),
        }
    if config.num_positions:
        params["positions"] = _layers.normal(k_pos, (config.num_positions, D), 0.01)
    return params


def check_inputs(config, inputs, *, step: bool) -> None:
    """Static checks of shapes and dtypes (and token ids when their values are known)."""
    name = "input_B" if step else "inputs"
    if config.head == "tokens":
        want = "[B]" if step else "[B, L]"
        if inputs.ndim != (1 if step else 2) or not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise TypeError(
                f"{name} must be integer tokens {want} for head='tokens', got "
                f"{inputs.dtype} {tuple(inputs.shape)}"
            )
        values = _layers.concrete(inputs)
        if (
            values is not None
            and values.size
            and (values.min() < 0 or values.max() >= config.vocab_size)
        ):
            raise ValueError(
                f"{name} holds token ids outside the vocabulary [0, {config.vocab_size}) "
                f"(min {values.min()}, max {values.max()}); re-tokenize or enlarge vocab_size"
            )
    else:
        want = f"[B, C={config.channels}]" if step else f"[B, L, C={config.channels}]"
        ndim = 2 if step else 3
        if (
            inputs.ndim != ndim
            or inputs.shape[-1] != config.channels
            or not jnp.issubdtype(inputs.dtype, jnp.floating)
        ):
            raise TypeError(
                f"{name} must be float vectors {want} for head='gaussian', got "
                f"{inputs.dtype} {tuple(inputs.shape)}"
            )
    if not step and inputs.shape[1] < 1:
        raise ValueError(f"{name} has length 0; pass at least one position")


def embed(config, params, inputs, positions_BxL):
    """inputs [B, L] tokens or [B, L, C] vectors -> x_BxLxD float32 (+ learned positions)."""
    if config.head == "tokens":
        # float32 activations whatever the table's dtype (bfloat16 checkpoints)
        x_BxLxD = jnp.take(params["embed"]["tokens"], inputs, axis=0).astype(jnp.float32)
    else:
        p = params["embed"]
        h = jax.nn.gelu(_layers.dense(inputs, p["w1"], p["b1"], config.dtype))
        x_BxLxD = _layers.dense(h, p["w2"], p["b2"], config.dtype)
    if config.num_positions:
        x_BxLxD = x_BxLxD + jnp.take(params["positions"], positions_BxL, axis=0)
    return x_BxLxD


def output(config, params, x_BxLxD):
    """Final hidden states -> logits [B, L, V] or GaussianPrediction([B, L, C], [B, L, C])."""
    if config.head == "tokens":
        if config.tie_embeddings:
            return _layers.dense(x_BxLxD, params["embed"]["tokens"].T, None, config.dtype)
        return _layers.dense(x_BxLxD, params["head"]["unembed"], None, config.dtype)
    p = params["head"]
    h = jax.nn.gelu(_layers.dense(x_BxLxD, p["w1"], p["b1"], config.dtype))
    raw = _layers.dense(h, p["w2"], p["b2"], config.dtype)
    C = config.channels
    return GaussianPrediction(raw[..., :C], jax.nn.softplus(raw[..., C:]) + STD_FLOOR)


def check_positions(config, length: int, offset_known: int = 0) -> None:
    """Raises when positions up to `offset_known + length` exceed the learned positions."""
    P = config.num_positions
    if P and offset_known + length > P:
        raise ValueError(
            f"{offset_known + length} positions exceed max_positions={P} (learned absolute "
            "positions); raise max_positions in the config"
        )
