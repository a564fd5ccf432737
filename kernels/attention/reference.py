"""Plain causal attention with the whole score matrix: the oracle for the O(L) forms.

Both functions build the full [T, S] scores per head (quadratic memory) and take the softmax
in float32. Query head h reads key/value head h // (H // K) (grouped-query attention; K/V are
indexed, never repeated).

  causal_attention_reference  whole sequences: query t sees keys 0 .. t.
  prefill_attention_reference a block of T queries continuing a KV cache: query t of
                              sequence b sits at position offsets[b] + t and sees cache rows
                              0 .. offsets[b] + t. Rows at or past offsets[b] + T may hold
                              garbage (even NaN); they are masked in the scores and the values.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["causal_attention_reference", "prefill_attention_reference"]


def _attend(q_BxTxHxE, k_BxKxSxE, v_BxKxSxE, visible_BxTxS, valid_BxS, scale):
    B, T, H, E = q_BxTxHxE.shape
    K = k_BxKxSxE.shape[1]
    q_BxTxKxRxE = q_BxTxHxE.reshape(B, T, K, H // K, E).astype(jnp.float32)
    v = jnp.where(valid_BxS[:, None, :, None], v_BxKxSxE.astype(jnp.float32), 0.0)
    s_BxKxRxTxS = jnp.einsum("btkre,bkse->bkrts", q_BxTxKxRxE, k_BxKxSxE.astype(jnp.float32))
    s_BxKxRxTxS = jnp.where(visible_BxTxS[:, None, None], s_BxKxRxTxS * scale, -jnp.inf)
    m = jnp.max(s_BxKxRxTxS, axis=-1, keepdims=True)
    p = jnp.exp(s_BxKxRxTxS - jnp.where(jnp.isfinite(m), m, 0.0))
    o_BxTxKxRxE = (
        jnp.einsum("bkrts,bkse->btkre", p, v) / jnp.moveaxis(jnp.sum(p, axis=-1), 3, 1)[..., None]
    )
    return o_BxTxKxRxE.reshape(B, T, H, E).astype(q_BxTxHxE.dtype)


def causal_attention_reference(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, *, scale):
    """softmax(q·kᵀ·scale + causal mask)·v with the full L×L scores; output in q's dtype."""
    B, L = q_BxLxHxE.shape[:2]
    visible_LxL = jnp.arange(L)[None, :] <= jnp.arange(L)[:, None]
    return _attend(
        q_BxLxHxE,
        jnp.swapaxes(k_BxLxKxE, 1, 2),
        jnp.swapaxes(v_BxLxKxE, 1, 2),
        jnp.broadcast_to(visible_LxL, (B, L, L)),
        jnp.ones((B, L), bool),
        scale,
    )


def prefill_attention_reference(q_BxTxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, offsets_B, *, scale):
    """Queries at positions offsets[b] + t over cache rows 0 .. offsets[b] + t (full scores)."""
    T = q_BxTxHxE.shape[1]
    S = k_cache_BxKxSxE.shape[2]
    positions_BxT = offsets_B[:, None] + jnp.arange(T)[None]
    visible_BxTxS = jnp.arange(S)[None, None, :] <= positions_BxT[:, :, None]
    valid_BxS = jnp.arange(S)[None, :] < (offsets_B + T)[:, None]
    return _attend(q_BxTxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, visible_BxTxS, valid_BxS, scale)
