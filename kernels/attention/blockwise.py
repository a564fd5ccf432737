"""Blockwise causal attention in plain JAX: O(L) memory forward and backward.

Layout inside this module: queries q_BxKxRxTxE (K key/value heads, R = H // K query heads per
KV head, T queries), keys and values k_BxKxSxE, v_BxKxSxE (S rows). Query t of sequence b sits
at position starts[b] + t (starts = 0 for whole sequences) and sees key rows 0 .. that
position.

Forward (flash attention): a loop over query blocks; for each, a loop over the key blocks it
can see with an online softmax (running max m, normaliser l, float32 accumulator). Key blocks
wholly above the causal diagonal are never visited (causal masking by skipping blocks); only
blocks that straddle the diagonal are masked, elementwise within the block. Never an L×L
array: the largest intermediate is one [B, K, R, block, block] score tile. The loops are
`lax.fori_loop`s with trip counts from the block index, so the program size does not grow with
L. Saved for the backward: q, k, v, the output and the per-query log-sum-exp (O(L)).

Backward (`jax.custom_vjp`, flash-attention-2 style, one pass): a loop over key blocks; for
each, a loop over the query blocks that see it, recomputing the score tile from q, k and the
saved log-sum-exp. dK and dV of the key block accumulate in the loop carry; dQ accumulates in a
float32 [B, K, R, T, E] buffer updated in place.

Lengths that are not a multiple of the block are padded with zero rows at the end (padded keys
are causally invisible to real queries; padded queries are dropped and get zero cotangents).

`garbage_rows=True` (prefill over a cache): rows at or past starts[b] + T may hold anything,
even NaN: scores there are masked to −inf, and those rows of the values (and, in the
backward, of the keys) are zeroed in every masked tile, since 0·NaN would leak through the
probability-times-value (and dS·K) matmuls otherwise.

Precision: the matmul operands keep the input dtype (bf16 stays bf16, probabilities are cast
to it for the P·V and dS·K products as flash attention does), accumulation and every softmax
statistic are float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["blockwise_attention"]

_F32 = jnp.float32


def _dot(spec, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=_F32)


def _pad_to(x, axis, size):
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad)


class _Geometry:
    """Static block geometry plus the (traced) per-sequence starts."""

    def __init__(self, T, S, block, starts_B):
        self.bq = min(block, T)
        self.bk = min(block, S) if starts_B is not None else self.bq
        self.nq = -(-T // self.bq)
        self.nk = -(-S // self.bk)
        self.Tp, self.Sp = self.nq * self.bq, self.nk * self.bk
        self.T = T
        if starts_B is None:
            self.starts_B = None
            self.lo_start = self.hi_start = 0
        else:
            self.starts_B = starts_B.astype(jnp.int32)
            self.lo_start = jnp.min(self.starts_B)
            self.hi_start = jnp.max(self.starts_B)

    def key_blocks(self, i):
        """(n_full, n_seen) for query block i: key blocks [0, n_full) are visible to every
        query of the block in every sequence, [n_full, n_seen) straddle the diagonal."""
        first_q = self.lo_start + i * self.bq
        last_q = self.hi_start + (i + 1) * self.bq - 1
        n_seen = jnp.clip(last_q // self.bk + 1, 0, self.nk)
        n_full = jnp.clip((first_q + 1) // self.bk, 0, n_seen)
        return n_full, n_seen

    def query_blocks(self, j):
        """(first, first_full) for key block j: query blocks [first, first_full) straddle it,
        [first_full, nq) see all of it."""
        first_key, last_key = j * self.bk, (j + 1) * self.bk - 1
        # the first query block whose last query (in some sequence) reaches first_key
        first = jnp.clip((first_key - self.hi_start) // self.bq, 0, self.nq)
        # the first query block whose first query (in every sequence) is past last_key
        first_full = jnp.clip(-(-(last_key - self.lo_start) // self.bq), first, self.nq)
        return first, first_full

    def tile_masks(self, i, j):
        """visible_Bx1x1xQxS (key row <= query position) and valid_Bx1xSx1 (row < end)."""
        q_pos_BxQ = i * self.bq + jnp.arange(self.bq)[None]  # [1, Q] for whole sequences
        k_pos_S = j * self.bk + jnp.arange(self.bk)
        if self.starts_B is None:
            return (k_pos_S[None, None, :] <= q_pos_BxQ[:, :, None])[:, None, None], None
        q_pos_BxQ = self.starts_B[:, None] + q_pos_BxQ
        visible = k_pos_S[None, None, :] <= q_pos_BxQ[:, :, None]
        valid = k_pos_S[None, :] < (self.starts_B + self.T)[:, None]
        return visible[:, None, None], valid[:, None, :, None]


def _slice(x, start, size, axis):
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def _forward(q, k, v, starts_B, scale, block, garbage_rows):
    T = q.shape[3]
    g = _Geometry(T, k.shape[2], block, starts_B)
    q = _pad_to(q, 3, g.Tp)
    k, v = _pad_to(k, 2, g.Sp), _pad_to(v, 2, g.Sp)

    def query_block(i, carry):
        o_buf, lse_buf = carry
        q_i = _slice(q, i * g.bq, g.bq, 3)

        def key_step(masked):
            def step(j, state):
                m, l, acc = state
                k_j, v_j = _slice(k, j * g.bk, g.bk, 2), _slice(v, j * g.bk, g.bk, 2)
                s = _dot("bkrqe,bkse->bkrqs", q_i, k_j) * scale
                if masked:
                    visible, valid = g.tile_masks(i, j)
                    s = jnp.where(visible, s, -jnp.inf)
                    if garbage_rows:
                        v_j = jnp.where(valid, v_j, jnp.zeros((), v_j.dtype))
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
                p = jnp.exp(s - m_safe[..., None])
                corr = jnp.exp(m - m_safe)
                l = l * corr + jnp.sum(p, axis=-1)
                acc = acc * corr[..., None] + _dot("bkrqs,bkse->bkrqe", p.astype(v.dtype), v_j)
                return m_new, l, acc

            return step

        n_full, n_seen = g.key_blocks(i)
        # buffers made with *_like keep the inputs' sharding (explicit mesh axes)
        state = (
            jnp.full_like(q_i[..., 0], -jnp.inf, _F32),
            jnp.zeros_like(q_i[..., 0], _F32),
            jnp.zeros_like(q_i, _F32),
        )
        state = lax.fori_loop(0, n_full, key_step(False), state)
        m, l, acc = lax.fori_loop(n_full, n_seen, key_step(True), state)
        l_safe = jnp.where(l > 0, l, 1.0)
        o_i = (acc / l_safe[..., None]).astype(q.dtype)
        lse_i = jnp.where(l > 0, m + jnp.log(l_safe), jnp.inf)
        o_buf = lax.dynamic_update_slice_in_dim(o_buf, o_i, i * g.bq, 3)
        lse_buf = lax.dynamic_update_slice_in_dim(lse_buf, lse_i, i * g.bq, 3)
        return o_buf, lse_buf

    o, lse = lax.fori_loop(
        0, g.nq, query_block, (jnp.zeros_like(q), jnp.zeros_like(q[..., 0], _F32))
    )
    return o[:, :, :, :T], lse[:, :, :, :T]


def _backward(q, k, v, starts_B, o, lse, do, scale, block, garbage_rows):
    T, S = q.shape[3], k.shape[2]
    g = _Geometry(T, S, block, starts_B)
    delta = jnp.sum(do.astype(_F32) * o.astype(_F32), axis=-1)  # [B, K, R, T]
    q, do = _pad_to(q, 3, g.Tp), _pad_to(do, 3, g.Tp)
    lse, delta = _pad_to(lse, 3, g.Tp), _pad_to(delta, 3, g.Tp)
    k, v = _pad_to(k, 2, g.Sp), _pad_to(v, 2, g.Sp)

    def key_block(j, carry):
        dq, dk_buf, dv_buf = carry
        k_j, v_j = _slice(k, j * g.bk, g.bk, 2), _slice(v, j * g.bk, g.bk, 2)

        def query_step(masked):
            def step(i, state):
                dq, dk_j, dv_j = state
                q_i, do_i = _slice(q, i * g.bq, g.bq, 3), _slice(do, i * g.bq, g.bq, 3)
                lse_i, delta_i = _slice(lse, i * g.bq, g.bq, 3), _slice(delta, i * g.bq, g.bq, 3)
                kk, vv = k_j, v_j
                if masked and garbage_rows:  # ds·k and dO·vᵀ must not meet NaN rows
                    _, valid = g.tile_masks(i, j)
                    kk = jnp.where(valid, k_j, jnp.zeros((), k_j.dtype))
                    vv = jnp.where(valid, v_j, jnp.zeros((), v_j.dtype))
                s = _dot("bkrqe,bkse->bkrqs", q_i, kk) * scale
                if masked:
                    s = jnp.where(g.tile_masks(i, j)[0], s, -jnp.inf)
                p = jnp.exp(s - lse_i[..., None])
                dv_j = dv_j + _dot("bkrqs,bkrqe->bkse", p.astype(do.dtype), do_i)
                dp = _dot("bkrqe,bkse->bkrqs", do_i, vv)
                ds = (p * (dp - delta_i[..., None])).astype(q.dtype)
                dk_j = dk_j + _dot("bkrqs,bkrqe->bkse", ds, q_i)
                dq_i = _slice(dq, i * g.bq, g.bq, 3) + _dot("bkrqs,bkse->bkrqe", ds, kk)
                dq = lax.dynamic_update_slice_in_dim(dq, dq_i, i * g.bq, 3)
                return dq, dk_j, dv_j

            return step

        first, first_full = g.query_blocks(j)
        zeros_kv = jnp.zeros_like(k_j, _F32)
        state = (dq, zeros_kv, zeros_kv)
        state = lax.fori_loop(first, first_full, query_step(True), state)
        dq, dk_j, dv_j = lax.fori_loop(first_full, g.nq, query_step(False), state)
        dk_buf = lax.dynamic_update_slice_in_dim(dk_buf, dk_j * scale, j * g.bk, 2)
        dv_buf = lax.dynamic_update_slice_in_dim(dv_buf, dv_j, j * g.bk, 2)
        return dq, dk_buf, dv_buf

    dq, dk, dv = lax.fori_loop(
        0,
        g.nk,
        key_block,
        (jnp.zeros_like(q, _F32), jnp.zeros_like(k, _F32), jnp.zeros_like(v, _F32)),
    )
    return (
        (dq[:, :, :, :T] * scale).astype(q.dtype),
        dk[:, :, :S].astype(k.dtype),
        dv[:, :, :S].astype(v.dtype),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, starts_B, scale, block, garbage_rows):
    return _forward(q, k, v, starts_B, scale, block, garbage_rows)[0]


def _attention_fwd(q, k, v, starts_B, scale, block, garbage_rows):
    o, lse = _forward(q, k, v, starts_B, scale, block, garbage_rows)
    return o, (q, k, v, starts_B, o, lse)


def _attention_bwd(scale, block, garbage_rows, residuals, do):
    q, k, v, starts_B, o, lse = residuals
    dq, dk, dv = _backward(q, k, v, starts_B, o, lse, do, scale, block, garbage_rows)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(
    q_BxKxRxTxE, k_BxKxSxE, v_BxKxSxE, starts_B=None, *, scale, block, garbage_rows=False
):
    """Causal attention in blocks of `block` rows; output [B, K, R, T, E] in q's dtype.

    `starts_B` None: whole sequences (S = T, query t sees keys 0 .. t). Otherwise query t of
    sequence b sees key rows 0 .. starts[b] + t (a block continuing a cache of S rows).
    """
    if starts_B is None and k_BxKxSxE.shape[2] != q_BxKxRxTxE.shape[3]:
        raise ValueError("whole-sequence attention needs as many keys as queries")
    return _attention(
        q_BxKxRxTxE, k_BxKxSxE, v_BxKxSxE, starts_B, float(scale), int(block), garbage_rows
    )
