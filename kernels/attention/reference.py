"""Plain causal attention with whole score matrices: the oracle for the O(L) forms, and the
form the models used before them (kept reachable as `implementation="reference"`).

Both build [T, S] scores per head (quadratic memory). Query head h reads key/value head
h // (H // K) (grouped-query attention).

  causal_attention_reference  whole sequences: query t sees keys 0 .. t. By query blocks (at
                              least 256 queries, at most 16 blocks) against the keys up to
                              the block's end, through `jax.nn.dot_product_attention` with a
                              boolean mask — the masked upper triangle of blocks is skipped,
                              the rest is dense (scores and probabilities saved for the
                              backward: O(L²) memory).
  prefill_attention_reference a block of T queries continuing a KV cache: query t of
                              sequence b sits at position offsets[b] + t and sees cache rows
                              0 .. offsets[b] + t. Rows at or past offsets[b] + T may hold
                              garbage (even NaN); they are zeroed in the keys and values and
                              masked in the scores (so no NaN reaches any gradient).
                              Full [T, S] scores with the softmax in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["causal_attention_reference", "prefill_attention_reference"]


def _attend(q_BxTxHxE, k_BxKxSxE, v_BxKxSxE, visible_BxTxS, valid_BxS, scale):
    B, T, H, E = q_BxTxHxE.shape
    K = k_BxKxSxE.shape[1]
    q_BxTxKxRxE = q_BxTxHxE.reshape(B, T, K, H // K, E).astype(jnp.float32)
    k = jnp.where(valid_BxS[:, None, :, None], k_BxKxSxE.astype(jnp.float32), 0.0)
    v = jnp.where(valid_BxS[:, None, :, None], v_BxKxSxE.astype(jnp.float32), 0.0)
    s_BxKxRxTxS = jnp.einsum("btkre,bkse->bkrts", q_BxTxKxRxE, k)
    s_BxKxRxTxS = jnp.where(visible_BxTxS[:, None, None], s_BxKxRxTxS * scale, -jnp.inf)
    m = jnp.max(s_BxKxRxTxS, axis=-1, keepdims=True)
    p = jnp.exp(s_BxKxRxTxS - jnp.where(jnp.isfinite(m), m, 0.0))
    o_BxTxKxRxE = (
        jnp.einsum("bkrts,bkse->btkre", p, v) / jnp.moveaxis(jnp.sum(p, axis=-1), 3, 1)[..., None]
    )
    return o_BxTxKxRxE.reshape(B, T, H, E).astype(q_BxTxHxE.dtype)


QUERY_BLOCK = 256  # minimum query block of the reference whole-sequence attention


def causal_attention_reference(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, *, scale):
    """softmax(q·kᵀ·scale + causal mask)·v by dense query blocks; output in q's dtype."""
    L = q_BxLxHxE.shape[1]
    block = max(QUERY_BLOCK, -(-L // 16))
    outs = []
    for start in range(0, L, block):
        stop = min(start + block, L)
        mask_TxS = jnp.arange(stop)[None, :] <= jnp.arange(start, stop)[:, None]
        outs.append(
            jax.nn.dot_product_attention(
                q_BxLxHxE[:, start:stop],
                k_BxLxKxE[:, :stop],
                v_BxLxKxE[:, :stop],
                scale=scale,
                mask=mask_TxS[None, None],
                implementation="xla",
            )
        )
    return jnp.concatenate(outs, axis=1)


def prefill_attention_reference(q_BxTxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, offsets_B, *, scale):
    """Queries at positions offsets[b] + t over cache rows 0 .. offsets[b] + t (full scores)."""
    T = q_BxTxHxE.shape[1]
    S = k_cache_BxKxSxE.shape[2]
    positions_BxT = offsets_B[:, None] + jnp.arange(T)[None]
    visible_BxTxS = jnp.arange(S)[None, None, :] <= positions_BxT[:, :, None]
    valid_BxS = jnp.arange(S)[None, :] < (offsets_B + T)[:, None]
    return _attend(q_BxTxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, visible_BxTxS, valid_BxS, scale)
