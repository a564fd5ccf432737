"""Dispatcher for attention of one new query token over a preallocated KV cache."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import _dispatch
from kernels.decode_attention import pallas, reference
from kernels.decode_attention.pallas import DecodeBlocks
from kernels.decode_attention.reference import append_kv

__all__ = ["DecodeBlocks", "append_kv", "decode_attention"]


# Backward (attention over a cache is rarely differentiated, but it can be): by recomputation —
# the Pallas forward saves its inputs and the backward differentiates the XLA reference on them.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _decode_pallas(q, k, v, lengths, scale, blocks, interpret, target):
    return pallas.decode_attention_pallas(
        q,
        k,
        v,
        lengths,
        scale=scale,
        block_size=blocks.block_size,
        blocks_per_split=blocks.blocks_per_split,
        interpret=interpret,
        target=target,
        num_warps=blocks.num_warps,
    )


def _decode_pallas_fwd(q, k, v, lengths, *static):
    return _decode_pallas(q, k, v, lengths, *static), (q, k, v, lengths)


def _decode_pallas_bwd(scale, blocks, interpret, target, residuals, g):
    q, k, v, lengths = residuals
    form = lambda q, k, v: reference.decode_attention_reference(q, k, v, lengths, scale=scale)
    _, vjp = jax.vjp(form, q, k, v)
    return (*vjp(g), None)


_decode_pallas.defvjp(_decode_pallas_fwd, _decode_pallas_bwd)


def decode_attention(
    q_BxHxE,
    k_cache_BxKxSxE,
    v_cache_BxKxSxE,
    lengths_B,
    *,
    scale=None,
    implementation="auto",
    interpret=False,
    blocks=None,
):
    """softmax(q·kᵀ·scale)·v over cache rows < lengths[b] (never reads beyond them).

    Args:
      q_BxHxE: one query token per sequence, H query heads.
      k_cache_BxKxSxE, v_cache_BxKxSxE: caches with K key/value heads (H a multiple of K,
        grouped-query attention) and capacity S.
      lengths_B: int32 number of valid rows per sequence (0 gives a zero output).
      scale: score scale, 1/sqrt(E) if None.
      implementation: "auto" | "xla" | "pallas"; interpret: run Pallas in interpret mode.
      blocks: `DecodeBlocks` for the Pallas kernel (None: defaults from the shapes).
    Returns:
      o_BxHxE in q's dtype.
    """
    if q_BxHxE.ndim != 3:
        raise ValueError(f"q_BxHxE has shape {tuple(q_BxHxE.shape)}; expected [B, H, E]")
    B, H, E = q_BxHxE.shape
    if k_cache_BxKxSxE.ndim != 4:
        raise ValueError(
            f"k_cache_BxKxSxE has shape {tuple(k_cache_BxKxSxE.shape)}; expected [B, K, S, E]"
        )
    K, S = k_cache_BxKxSxE.shape[1:3]
    if k_cache_BxKxSxE.shape != (B, K, S, E):
        raise ValueError(
            f"k_cache_BxKxSxE has shape {tuple(k_cache_BxKxSxE.shape)}; expected "
            f"[B={B}, K, S, E={E}] to match q_BxHxE"
        )
    if v_cache_BxKxSxE.shape != k_cache_BxKxSxE.shape:
        raise ValueError(
            f"v_cache_BxKxSxE has shape {tuple(v_cache_BxKxSxE.shape)}; expected the k cache's "
            f"{tuple(k_cache_BxKxSxE.shape)}"
        )
    if K < 1 or H % K:
        raise ValueError(f"the cache has K={K} KV heads, which must divide the H={H} query heads")
    if lengths_B.shape != (B,) or not jnp.issubdtype(lengths_B.dtype, jnp.integer):
        raise ValueError(
            f"lengths_B must be an integer array of shape ({B},), got {lengths_B.dtype} "
            f"{tuple(lengths_B.shape)}"
        )
    for name, a in (("q_BxHxE", q_BxHxE), ("k_cache_BxKxSxE", k_cache_BxKxSxE)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name} must be floating point, got dtype {a.dtype}")
    if v_cache_BxKxSxE.dtype != k_cache_BxKxSxE.dtype:
        raise TypeError(
            f"v_cache_BxKxSxE has dtype {v_cache_BxKxSxE.dtype}; expected the k cache's "
            f"{k_cache_BxKxSxE.dtype}"
        )
    scale = float(E) ** -0.5 if scale is None else scale
    problem = None
    for name, a in (("q_BxHxE", q_BxHxE), ("k_cache_BxKxSxE", k_cache_BxKxSxE)):
        if a.dtype not in (jnp.float32, jnp.bfloat16):
            problem = f"{name} has dtype {a.dtype} (the kernel takes float32 or bfloat16)"

    if blocks is not None and not isinstance(blocks, pallas.DecodeBlocks):
        raise TypeError(f"blocks must be a DecodeBlocks or None, got {type(blocks).__name__}")

    def target_blocks(target):
        return blocks if blocks is not None else pallas.DecodeBlocks.default(B, K, S, target)

    def unsupported(target):
        if problem is not None or target != "gpu":
            return problem
        if E & (E - 1) or (H // K >= 16 and E < 16):
            return (
                "the GPU kernel needs a head dimension E that is a power of two (>= 16 for "
                f"16 or more query heads per KV head), got {E}"
            )
        b = target_blocks(target)
        if S % b.block_size or b.block_size & (b.block_size - 1):
            return (
                f"the GPU kernel needs cache blocks (block_size={b.block_size}) that are a power "
                f"of two dividing the capacity S={S}"
            )
        return None

    scale = float(scale)

    def pallas_form(target, interpret=False):
        static = (scale, target_blocks(target), interpret, target)
        return lambda q, k, v, lengths: _decode_pallas(q, k, v, lengths, *static)

    def xla_form(q, k, v, lengths):
        return reference.decode_attention_reference(q, k, v, lengths, scale=scale)

    fn = _dispatch.select(
        "decode_attention",
        implementation,
        interpret,
        xla=xla_form,
        pallas=pallas_form,
        unsupported=unsupported,
    )
    return fn(q_BxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, lengths_B.astype(jnp.int32))
