"""Per-element losses: exact Gaussian KL, Gaussian NLL, token NLL (nats, float32)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_kl(
    mean_p: jax.Array, std_p: jax.Array, mean_q: jax.Array, std_q: jax.Array
) -> jax.Array:
    """KL(N(mean_p, std_p²) ‖ N(mean_q, std_q²)) elementwise (PAPER.md §6)."""
    ratio = std_p / std_q
    delta = (mean_p - mean_q) / std_q
    return -jnp.log(ratio) + 0.5 * (ratio * ratio + delta * delta) - 0.5


def gaussian_nll(z: jax.Array, mean_q: jax.Array, std_q: jax.Array) -> jax.Array:
    """−log N(z; mean_q, std_q²) elementwise."""
    delta = (z - mean_q) / std_q
    return jnp.log(std_q) + 0.5 * delta * delta + _HALF_LOG_2PI


def gaussian_entropy(std: jax.Array) -> jax.Array:
    """Differential entropy of N(·, std²) elementwise: log std + ½ log(2πe)."""
    return jnp.log(std) + _HALF_LOG_2PI + 0.5


def token_nll(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """−log softmax(logits)[target] for every position: [B, L].

    This takes the full logits (and its gradient is another [B, L, V] array); training and
    scoring use the fused head instead, `models.token_logprobs`, which gives the same numbers
    from the hidden states over chunks of positions (`TokenTask(logprob_fn=...)`).
    """
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
