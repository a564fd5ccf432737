"""Flash-decoding in Pallas: one query token against a KV cache bounded by per-sequence lengths.

Grid (batch, KV heads, splits). Each program takes the R = H // K query heads that share one KV
head and one split of the cache (`blocks_per_split` blocks of `block_size` rows), walks the
blocks that hold valid rows with a `fori_loop` whose trip count comes from the sequence's
length, and keeps an online softmax (running max m, normaliser l, fp32 accumulator). The
partial results of the splits are merged outside the kernel by a log-sum-exp combine.

Never past the length: rows at or beyond `lengths[b]` are masked in the scores (→ −inf) and
in the values (→ 0, so NaN garbage there cannot leak through 0·NaN), and blocks wholly past
the length are not visited. On TPU the lengths are scalar-prefetched and a split wholly past
the length maps to the previous block index, so its DMA is skipped; the last partly valid
split is fetched whole (at most one split of rows past the length is read and ignored). On GPU
(Triton lowering) only the visited blocks are loaded.

The cache is never copied or padded. On TPU a capacity S that is not a multiple of the split
leaves the last split hanging over the end; those rows are past every length and masked. On
GPU the blocks must tile S (the dispatcher requires S % 16 == 0 there, else "auto" falls back);
a split may still hang over the end, but its blocks past S are never visited.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _dispatch

__all__ = ["decode_attention_pallas", "default_blocks"]

_F32 = jnp.float32
_HI = lax.Precision.HIGHEST


def default_blocks(B, K, S, target):
    """(block_size, blocks_per_split): enough splits to fill the chip, blocks it can tile."""
    if target == "gpu":  # loads are not masked at the array's end: blocks must tile S
        block = next(b for b in (64, 32, 16, 8, 4, 2, 1) if S % b == 0)
    else:  # TPU: a block hanging over the end is padded by the pipeline and masked here
        block = min(512, max(8, _dispatch.next_pow2(S)))
    n_blocks = -(-S // block)
    want_splits = max(1, -(-(256 if target == "gpu" else 8) // (B * K)))
    per_split = max(1, -(-n_blocks // want_splits))
    if target == "tpu":  # a split is one VMEM block (double-buffered, K and V): ≤ 2048 rows
        per_split = min(per_split, 2048 // block)
    return block, per_split


def _decode_kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale, block, target):
    """q [R, E]; k/v [split rows, E]; outputs acc [R, E], m and l [R, 1] for this split."""
    b, s = pl.program_id(0), pl.program_id(2)
    split_rows = k_ref.shape[0]
    length = len_ref[b] if target == "tpu" else len_ref[0]
    start = s * split_rows
    n_blocks = jnp.clip((length - start + block - 1) // block, 0, split_rows // block)
    q_RxE = q_ref[...].astype(_F32) * scale
    R, E = q_RxE.shape

    def body(i, carry):
        m_Rx1, l_Rx1, acc_RxE = carry
        rows = pl.ds(pl.multiple_of(i * block, block), block)
        pos_1xT = start + i * block + lax.broadcasted_iota(jnp.int32, (1, block), 1)
        valid_1xT = pos_1xT < length
        valid_Tx1 = (start + i * block + lax.broadcasted_iota(jnp.int32, (block, 1), 0)) < length
        k_TxE = jnp.where(valid_Tx1, k_ref[rows, :].astype(_F32), 0.0)
        v_TxE = jnp.where(valid_Tx1, v_ref[rows, :].astype(_F32), 0.0)
        s_RxT = jnp.dot(q_RxE, k_TxE.T, preferred_element_type=_F32, precision=_HI)
        s_RxT = jnp.where(valid_1xT, s_RxT, -jnp.inf)
        m_new = jnp.maximum(m_Rx1, jnp.max(s_RxT, axis=1, keepdims=True))
        alpha_Rx1 = jnp.exp(m_Rx1 - m_new)
        p_RxT = jnp.exp(s_RxT - m_new)
        l_Rx1 = alpha_Rx1 * l_Rx1 + jnp.sum(p_RxT, axis=1, keepdims=True)
        acc_RxE = alpha_Rx1 * acc_RxE + jnp.dot(
            p_RxT, v_TxE, preferred_element_type=_F32, precision=_HI
        )
        return m_new, l_Rx1, acc_RxE

    init = (jnp.full((R, 1), -jnp.inf, _F32), jnp.zeros((R, 1), _F32), jnp.zeros((R, E), _F32))
    m_Rx1, l_Rx1, acc_RxE = lax.fori_loop(0, n_blocks, body, init)
    o_ref[...] = acc_RxE
    m_ref[...] = m_Rx1
    l_ref[...] = l_Rx1


@functools.partial(
    jax.jit, static_argnames=("scale", "block_size", "blocks_per_split", "interpret", "target")
)
def decode_attention_pallas(
    q_BxHxE,
    k_cache_BxKxSxE,
    v_cache_BxKxSxE,
    lengths_B,
    *,
    scale,
    block_size,
    blocks_per_split,
    interpret,
    target,
):
    """Flash-decoding forward. Returns o_BxHxE in q's dtype (zeros where lengths[b] == 0)."""
    B, H, E = q_BxHxE.shape
    K, S = k_cache_BxKxSxE.shape[1:3]
    R = H // K
    split_rows = block_size * blocks_per_split
    n_splits = -(-S // split_rows)
    q = q_BxHxE.reshape(B, K, R, E)
    Rp = max(16, _dispatch.next_pow2(R)) if target == "gpu" else R  # Triton dot: M >= 16
    if Rp != R:
        q = jnp.pad(q, ((0, 0), (0, 0), (0, Rp - R), (0, 0)))
    lengths_B = lengths_B.astype(jnp.int32)
    sq = pl.squeezed
    out_shape = [
        jax.ShapeDtypeStruct((B, K, n_splits, Rp, E), _F32),
        jax.ShapeDtypeStruct((B, K, n_splits, Rp, 1), _F32),
        jax.ShapeDtypeStruct((B, K, n_splits, Rp, 1), _F32),
    ]
    kernel = functools.partial(_decode_kernel, scale=scale, block=block_size, target=target)
    if target == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        def kv_map(b, k, s, len_ref):  # splits past the length repeat the last valid one
            last = jnp.maximum((len_ref[b] + split_rows - 1) // split_rows - 1, 0)
            return b, k, jnp.minimum(s, last), 0

        out_map = lambda b, k, s, len_ref: (b, k, s, 0, 0)
        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(B, K, n_splits),
            in_specs=[
                pl.BlockSpec((sq, sq, Rp, E), lambda b, k, s, len_ref: (b, k, 0, 0)),
                pl.BlockSpec((sq, sq, split_rows, E), kv_map),
                pl.BlockSpec((sq, sq, split_rows, E), kv_map),
            ],
            out_specs=[
                pl.BlockSpec((sq, sq, sq, Rp, E), out_map),
                pl.BlockSpec((sq, sq, sq, Rp, 1), out_map),
                pl.BlockSpec((sq, sq, sq, Rp, 1), out_map),
            ],
        )
        call = pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid_spec=grid_spec,
            compiler_params=_dispatch.compiler_params(target, ("parallel",) * 3),
            interpret=interpret,
            name="decode_attention",
        )
        acc, m, l = call(lengths_B, q, k_cache_BxKxSxE, v_cache_BxKxSxE)
    else:
        out_map = lambda b, k, s: (b, k, s, 0, 0)
        call = pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(B, K, n_splits),
            in_specs=[
                pl.BlockSpec((1,), lambda b, k, s: (b,)),
                pl.BlockSpec((sq, sq, Rp, E), lambda b, k, s: (b, k, 0, 0)),
                pl.BlockSpec((sq, sq, split_rows, E), lambda b, k, s: (b, k, s, 0)),
                pl.BlockSpec((sq, sq, split_rows, E), lambda b, k, s: (b, k, s, 0)),
            ],
            out_specs=[
                pl.BlockSpec((sq, sq, sq, Rp, E), out_map),
                pl.BlockSpec((sq, sq, sq, Rp, 1), out_map),
                pl.BlockSpec((sq, sq, sq, Rp, 1), out_map),
            ],
            compiler_params=_dispatch.compiler_params(target, ("parallel",) * 3),
            interpret=interpret,
            name="decode_attention",
        )
        acc, m, l = call(lengths_B, q, k_cache_BxKxSxE, v_cache_BxKxSxE)
    # Log-sum-exp combine of the splits (empty splits have m = −inf, l = 0, acc = 0).
    m_max = jnp.max(m, axis=2, keepdims=True)
    m_max = jnp.where(jnp.isfinite(m_max), m_max, 0.0)
    w = jnp.exp(m - m_max)
    l_tot = jnp.sum(w * l, axis=2)
    o = jnp.sum(w * acc, axis=2) / jnp.where(l_tot > 0, l_tot, 1.0)
    return o[:, :, :R].reshape(B, H, E).astype(q_BxHxE.dtype)
