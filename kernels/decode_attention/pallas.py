"""Flash-decoding in Pallas: one query token against a KV cache bounded by per-sequence lengths.

Grid (batch, KV heads, splits). Each program takes the R = H // K query heads that share one KV
head and one split of the cache (`blocks_per_split` blocks of `block_size` rows), walks the
blocks that hold valid rows with a `fori_loop` whose trip count comes from the sequence's
length, and keeps an online softmax (running max m, normaliser l, fp32 accumulator). The
partial results of the splits are merged outside the kernel by a log-sum-exp combine.

Query rows: on TPU and for GQA groups of 16 or more rows on GPU, q·kᵀ and p·v are matmuls
(operands in the cache's dtype: bfloat16 with float32 accumulation at default precision for a
bf16 cache, HIGHEST for float32); on GPU a group of fewer than 16 rows (Triton's `dot` needs
16) is computed row by row on the CUDA cores instead of being padded to 16 rows — decoding is
bandwidth-bound, and each K/V block is loaded once for all rows of the group.

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

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _dispatch

__all__ = ["DecodeBlocks", "decode_attention_pallas", "default_blocks"]

_F32 = jnp.float32
_HI = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class DecodeBlocks:
    """Block sizes of flash-decoding.

    Attributes:
      block_size: cache rows per inner step (GPU: a power of two dividing S).
      blocks_per_split: blocks per program; the cache splits into S / (block·blocks) programs
        per (batch, KV head), merged by a log-sum-exp combine.
      num_warps: Triton launch parameter (GPU).
    """

    block_size: int
    blocks_per_split: int
    num_warps: int = 4

    @classmethod
    def default(cls, B, K, S, target) -> DecodeBlocks:
        """Enough splits to fill the chip, blocks it can tile."""
        if target == "gpu":  # loads are not masked at the array's end: blocks must tile S
            block = next(b for b in (64, 32, 16, 8, 4, 2, 1) if S % b == 0)
        else:  # TPU: a block hanging over the end is padded by the pipeline and masked here
            block = min(512, max(8, _dispatch.next_pow2(S)))
        n_blocks = -(-S // block)
        want_splits = max(1, -(-(256 if target == "gpu" else 8) // (B * K)))
        per_split = max(1, -(-n_blocks // want_splits))
        if target == "tpu":  # a split is one VMEM block (double-buffered, K and V): ≤ 2048 rows
            per_split = min(per_split, 2048 // block)
        return cls(block, per_split, 4)


def default_blocks(B, K, S, target):
    """(block_size, blocks_per_split) of `DecodeBlocks.default`."""
    b = DecodeBlocks.default(B, K, S, target)
    return b.block_size, b.blocks_per_split


def _scores_dot(q_RxE, k_TxE, cd):
    precision = _HI if cd == _F32 else lax.Precision.DEFAULT
    dims = (((1,), (1,)), ((), ()))  # q·kᵀ by dimension numbers
    return lax.dot_general(
        q_RxE.astype(cd), k_TxE.astype(cd), dims, precision=precision, preferred_element_type=_F32
    )


def _pv_dot(p_RxT, v_TxE, cd):
    precision = _HI if cd == _F32 else lax.Precision.DEFAULT
    return jnp.dot(
        p_RxT.astype(cd), v_TxE.astype(cd), precision=precision, preferred_element_type=_F32
    )


def _decode_kernel(
    len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale, block, target, rowwise
):
    """q [R, E]; k/v [split rows, E]; outputs acc [R, E], m and l [R, 1] for this split.

    `rowwise`: the GPU form for R < 16 query rows (no matmul, one row at a time)."""
    b, s = pl.program_id(0), pl.program_id(2)
    split_rows = k_ref.shape[0]
    length = len_ref[b] if target == "tpu" else len_ref[0]
    start = s * split_rows
    n_blocks = jnp.clip((length - start + block - 1) // block, 0, split_rows // block)
    cd = k_ref.dtype if k_ref.dtype == jnp.bfloat16 else _F32
    R, E = q_ref.shape

    def load_block(i):
        rows = pl.ds(pl.multiple_of(i * block, block), block)
        pos_1xT = start + i * block + lax.broadcasted_iota(jnp.int32, (1, block), 1)
        valid_Tx1 = (start + i * block + lax.broadcasted_iota(jnp.int32, (block, 1), 0)) < length
        zero = jnp.zeros((), k_ref.dtype)
        k_TxE = jnp.where(valid_Tx1, k_ref[rows, :], zero)
        v_TxE = jnp.where(valid_Tx1, v_ref[rows, :], zero)  # NaN past the length: never used
        return pos_1xT < length, k_TxE, v_TxE

    def update(carry, s_RxT, valid_1xT, pv):
        m_Rx1, l_Rx1, acc_RxE = carry
        s_RxT = jnp.where(valid_1xT, s_RxT, -jnp.inf)
        m_new = jnp.maximum(m_Rx1, jnp.max(s_RxT, axis=1, keepdims=True))
        alpha_Rx1 = jnp.exp(m_Rx1 - m_new)
        p_RxT = jnp.exp(s_RxT - m_new)
        l_Rx1 = alpha_Rx1 * l_Rx1 + jnp.sum(p_RxT, axis=1, keepdims=True)
        return m_new, l_Rx1, alpha_Rx1 * acc_RxE + pv(p_RxT)

    def init(rows):
        return (
            jnp.full((rows, 1), -jnp.inf, _F32),
            jnp.zeros((rows, 1), _F32),
            jnp.zeros((rows, E), _F32),
        )

    if not rowwise:
        q_RxE = (q_ref[...].astype(_F32) * scale).astype(cd)

        def body(i, carry):
            valid_1xT, k_TxE, v_TxE = load_block(i)
            s_RxT = _scores_dot(q_RxE, k_TxE, cd)
            return update(carry, s_RxT, valid_1xT, lambda p: _pv_dot(p, v_TxE, cd))

        m_Rx1, l_Rx1, acc_RxE = lax.fori_loop(0, n_blocks, body, init(R))
        o_ref[...] = acc_RxE
        m_ref[...] = m_Rx1
        l_ref[...] = l_Rx1
        return

    # GPU, R < 16 rows: each row against the block on the CUDA cores (the block is loaded
    # once per step for all rows).
    qs = [q_ref[pl.ds(r, 1), :].astype(_F32) * scale for r in range(R)]

    def body_rows(i, carries):
        valid_1xT, k_TxE, v_TxE = load_block(i)
        k_TxE, v_TxE = k_TxE.astype(_F32), v_TxE.astype(_F32)
        out = []
        for q_1xE, carry in zip(qs, carries, strict=True):
            s_1xT = jnp.sum(k_TxE * q_1xE, axis=1).reshape(1, block)
            pv = lambda p_1xT: jnp.sum(p_1xT.reshape(block, 1) * v_TxE, axis=0, keepdims=True)
            out.append(update(carry, s_1xT, valid_1xT, pv))
        return tuple(out)

    carries = lax.fori_loop(0, n_blocks, body_rows, tuple(init(1) for _ in range(R)))
    for r, (m_1x1, l_1x1, acc_1xE) in enumerate(carries):
        o_ref[pl.ds(r, 1), :] = acc_1xE
        m_ref[pl.ds(r, 1), :] = m_1x1
        l_ref[pl.ds(r, 1), :] = l_1x1


@functools.partial(
    jax.jit,
    static_argnames=("scale", "block_size", "blocks_per_split", "interpret", "target", "num_warps"),
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
    num_warps=4,
):
    """Flash-decoding forward. Returns o_BxHxE in q's dtype (zeros where lengths[b] == 0)."""
    B, H, E = q_BxHxE.shape
    K, S = k_cache_BxKxSxE.shape[1:3]
    R = H // K
    split_rows = block_size * blocks_per_split
    n_splits = -(-S // split_rows)
    q = q_BxHxE.reshape(B, K, R, E)
    # GPU: R >= 16 rows are a matmul (padded to a power of two); fewer go row by row, unpadded.
    rowwise = target == "gpu" and R < 16
    Rp = _dispatch.next_pow2(R) if target == "gpu" and not rowwise else R
    if Rp != R:
        q = jnp.pad(q, ((0, 0), (0, 0), (0, Rp - R), (0, 0)))
    lengths_B = lengths_B.astype(jnp.int32)
    sq = pl.squeezed
    out_shape = [
        jax.ShapeDtypeStruct((B, K, n_splits, Rp, E), _F32),
        jax.ShapeDtypeStruct((B, K, n_splits, Rp, 1), _F32),
        jax.ShapeDtypeStruct((B, K, n_splits, Rp, 1), _F32),
    ]
    kernel = functools.partial(
        _decode_kernel, scale=scale, block=block_size, target=target, rowwise=rowwise
    )
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
            compiler_params=_dispatch.compiler_params(
                target, ("parallel",) * 3, num_warps=num_warps
            ),
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
