"""XLA forms of the scans with a chunk-boundary backward.

The forward keeps only the state at the start of every chunk of T positions (memory
O(B·L/T·state) besides the inputs); the backward runs over the chunks in reverse, recomputes
each chunk from its saved start state and differentiates it (`jax.vjp` of one chunk), carrying
dL/dh from chunk to chunk. No second pass over the whole sequence, no B·L·state residuals.

  ssd(x, dt, A, B, C, h0, chunk, forward)             forward: "sequential" | "chunked"
  selective_scan(x, dt, A, B, C, h0, chunk, forward)  forward: "sequential" | "chunked"

"sequential" runs the forward as one `lax.scan` step per position (the fastest forward on
CPU); "chunked" as the chunked parallel form (matmuls per chunk for SSD, an associative scan
per chunk for the selective scan: the forms for accelerators). The backward of one chunk is
the chunked form's (SSD: the quadratic in-chunk form; selective scan: the sequential scan on
CPU, the associative scan elsewhere). Values and the final state equal the oracle's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from kernels.scan import reference

__all__ = ["selective_scan", "ssd", "ssd_chunk", "ssd_chunk_states"]

_F32 = jnp.float32


def _pad_time(a, pad):
    if not pad:
        return a
    return jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))


def _chunk_major(a, T):
    """[B, nc·T, ...] -> [nc, B, T, ...]."""
    B, Lp = a.shape[:2]
    return jnp.swapaxes(a.reshape(B, Lp // T, T, *a.shape[2:]), 0, 1)


def _unchunk(a_CxBxTx, L):
    """[nc, B, T, ...] -> [B, L, ...]."""
    nc, B, T = a_CxBxTx.shape[:3]
    return jnp.swapaxes(a_CxBxTx, 0, 1).reshape(B, nc * T, *a_CxBxTx.shape[3:])[:, :L]


# ----------------------------------------------------------------------------- SSD


def ssd_chunk(x_BxTxHxP, dt_BxTxH, A_H, B_BxTxGxN, C_BxTxGxN, h_BxHxPxN):
    """One chunk of SSD from start state h, in float32: (y_BxTxHxP, end state h_BxHxPxN).

    Quadratic in-chunk form with C·Bᵀ once per group:
      y_t = Σ_{s≤t} exp(cum_t − cum_s) (C_t·B_s) dt_s x_s + exp(cum_t) h C_t
      h'  = exp(cum_T) h + Σ_s exp(cum_T − cum_s) dt_s x_s ⊗ B_s
    """
    B, T, H, P = x_BxTxHxP.shape
    G, N = B_BxTxGxN.shape[2:]
    R = H // G
    x = x_BxTxHxP.astype(_F32).reshape(B, T, G, R, P)
    dt = dt_BxTxH.astype(_F32).reshape(B, T, G, R)
    Bm, Cm = B_BxTxGxN.astype(_F32), C_BxTxGxN.astype(_F32)
    h = h_BxHxPxN.astype(_F32).reshape(B, G, R, P, N)
    cum_BxTxGxR = jnp.cumsum(dt * A_H.astype(_F32).reshape(1, 1, G, R), axis=1)
    xdt = x * dt[..., None]
    causal_TxT = jnp.tril(jnp.ones((T, T), bool))
    seg = cum_BxTxGxR[:, :, None] - cum_BxTxGxR[:, None, :]  # [B, T(t), T(s), G, R]
    decay = jnp.exp(jnp.where(causal_TxT[None, :, :, None, None], seg, -jnp.inf))
    cb_BxGxTxT = jnp.einsum("btgn,bsgn->bgts", Cm, Bm)
    y = jnp.einsum("bgts,btsgr,bsgrp->btgrp", cb_BxGxTxT, decay, xdt)
    y = y + jnp.exp(cum_BxTxGxR)[..., None] * jnp.einsum("bgrpn,btgn->btgrp", h, Cm)
    last = cum_BxTxGxR[:, -1]  # [B, G, R]
    to_end = jnp.exp(last[:, None] - cum_BxTxGxR)
    h = jnp.exp(last)[..., None, None] * h + jnp.einsum("btgr,btgrp,btgn->bgrpn", to_end, xdt, Bm)
    return y.reshape(B, T, H, P), h.reshape(B, H, P, N)


def ssd_chunk_states(x, dt, A, Bm, Cm, h0, T, forward):
    """(y_BxLxHxP, final h, start states h_CxBxHxPxN of the nc chunks of T positions)."""
    L, H = x.shape[1:3]
    pad = -L % T
    xs = [_chunk_major(_pad_time(a.astype(_F32), pad), T) for a in (x, dt, Bm, Cm)]
    h0 = h0.astype(_F32)
    if forward == "sequential":
        A32 = A.astype(_F32)
        G = Bm.shape[2]

        def step(h_BxHxPxN, inputs):
            x_BxHxP, dt_BxH, B_BxGxN, C_BxGxN = inputs
            Bh, Ch = (jnp.repeat(a, H // G, axis=1) for a in (B_BxGxN, C_BxGxN))
            decay_BxH = jnp.exp(dt_BxH * A32[None])
            inject = (dt_BxH[..., None] * x_BxHxP)[..., None] * Bh[:, :, None, :]
            h_BxHxPxN = decay_BxH[..., None, None] * h_BxHxPxN + inject
            return h_BxHxPxN, jnp.einsum("bhpn,bhn->bhp", h_BxHxPxN, Ch)

        def chunk(h, inputs):
            h_end, y_TxBxHxP = lax.scan(step, h, [jnp.swapaxes(a, 0, 1) for a in inputs])
            return h_end, (jnp.swapaxes(y_TxBxHxP, 0, 1), h)

    else:

        def chunk(h, inputs):
            y, h_end = ssd_chunk(*inputs[:2], A, *inputs[2:], h)
            return h_end, (y, h)

    h, (y, h_starts) = lax.scan(chunk, h0, xs)
    return _unchunk(y, L).astype(x.dtype), h, h_starts


def _ssd_primal(x, dt, A, Bm, Cm, h0, T, forward):
    if forward == "sequential":
        return reference.ssd_sequential(x, dt, A, Bm, Cm, h0_BxHxPxN=h0)
    return reference.ssd_chunked(x, dt, A, Bm, Cm, chunk_size=T, h0_BxHxPxN=h0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def ssd(x, dt, A, Bm, Cm, h0, T, forward):
    """SSD with a chunk-boundary backward: (y_BxLxHxP in x's dtype, final h float32)."""
    return _ssd_primal(x, dt, A, Bm, Cm, h0, T, forward)


def _ssd_fwd(x, dt, A, Bm, Cm, h0, T, forward):
    y, h, h_starts = ssd_chunk_states(x, dt, A, Bm, Cm, h0, T, forward)
    return (y, h), (x, dt, A, Bm, Cm, h0, h_starts)


def _ssd_bwd(T, forward, residuals, cotangents):
    x, dt, A, Bm, Cm, h0, h_starts = residuals
    return reverse_chunks(ssd_chunk, T, (x, dt, Bm, Cm), A, h0, h_starts, cotangents)


ssd.defvjp(_ssd_fwd, _ssd_bwd)


def reverse_chunks(chunk_fn, T, seq_args, A, h0, h_starts, cotangents):
    """Gradients of a chunked scan from its chunk start states, over the chunks in reverse.

    `chunk_fn(*seq_chunk, A, h)` -> (y chunk, end state) is one chunk of the scan;
    `seq_args` are the [B, L, ...] inputs (padded here to whole chunks with zeros: dt = 0
    leaves the state alone). Returns the cotangents of (*seq_args[:2], A, *seq_args[2:], h0)
    in the inputs' dtypes.
    """
    gy, gh = cotangents
    L = seq_args[0].shape[1]
    pad = -L % T
    xs = [_chunk_major(_pad_time(a.astype(_F32), pad), T) for a in seq_args]
    gy = _chunk_major(_pad_time(gy.astype(_F32), pad), T)
    A32 = A.astype(_F32)

    def step(carry, inputs):
        g_h, dA = carry
        *chunk_args, h_start, gy_c = inputs

        def f(*a):
            return chunk_fn(*a[:2], a[-2], *a[2:-2], a[-1])

        (y_c, _), vjp = jax.vjp(lambda *a: f(*a), *chunk_args, A32, h_start)
        grads = vjp((gy_c.astype(y_c.dtype), g_h))
        *d_seq, dA_c, dh = grads
        return (dh, dA + dA_c), tuple(d_seq)

    init = (gh.astype(_F32), jnp.zeros_like(A32))
    (dh0, dA), d_seq = lax.scan(step, init, (*xs, h_starts, gy), reverse=True)
    d_seq = [_unchunk(d, L).astype(a.dtype) for d, a in zip(d_seq, seq_args, strict=True)]
    return (*d_seq[:2], dA.astype(A.dtype), *d_seq[2:], dh0.astype(h0.dtype))


# ----------------------------------------------------------------------------- Mamba-1


def _selective_chunk_sequential(x_BxTxD, dt_BxTxD, A_DxN, B_BxTxN, C_BxTxN, h_BxDxN):
    y, h = reference.selective_scan_sequential(
        x_BxTxD, dt_BxTxD, A_DxN, B_BxTxN, C_BxTxN, h0_BxDxN=h_BxDxN
    )
    return y.astype(_F32), h


def _selective_chunk_parallel(x_BxTxD, dt_BxTxD, A_DxN, B_BxTxN, C_BxTxN, h_BxDxN):
    return reference._selective_parallel(
        *(a.astype(_F32) for a in (x_BxTxD, dt_BxTxD, A_DxN, B_BxTxN, C_BxTxN)), h_BxDxN
    )


def selective_chunk_states(x, dt, A, Bm, Cm, h0, T, forward):
    """(y_BxLxD, final h, start states h_CxBxDxN of the nc chunks of T positions)."""
    L = x.shape[1]
    pad = -L % T
    xs = [_chunk_major(_pad_time(a.astype(_F32), pad), T) for a in (x, dt, Bm, Cm)]
    chunk_fn = _selective_chunk_sequential if forward == "sequential" else _selective_chunk_parallel

    def chunk(h, inputs):
        y, h_end = chunk_fn(*inputs[:2], A, *inputs[2:], h)
        return h_end, (y, h)

    h, (y, h_starts) = lax.scan(chunk, h0.astype(_F32), xs)
    return _unchunk(y, L).astype(x.dtype), h, h_starts


def _selective_primal(x, dt, A, Bm, Cm, h0, T, forward):
    if forward == "sequential":
        return reference.selective_scan_sequential(x, dt, A, Bm, Cm, h0_BxDxN=h0)
    return reference.selective_scan_chunked(x, dt, A, Bm, Cm, h0_BxDxN=h0, chunk_size=T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def selective_scan(x, dt, A, Bm, Cm, h0, T, forward):
    """Selective scan with a chunk-boundary backward: (y_BxLxD in x's dtype, final h)."""
    return _selective_primal(x, dt, A, Bm, Cm, h0, T, forward)


def _selective_fwd(x, dt, A, Bm, Cm, h0, T, forward):
    y, h, h_starts = selective_chunk_states(x, dt, A, Bm, Cm, h0, T, forward)
    return (y, h), (x, dt, A, Bm, Cm, h0, h_starts)


def _selective_bwd(T, forward, residuals, cotangents):
    x, dt, A, Bm, Cm, h0, h_starts = residuals
    chunk_fn = _selective_chunk_sequential if forward == "sequential" else _selective_chunk_parallel
    return reverse_chunks(chunk_fn, T, (x, dt, Bm, Cm), A, h0, h_starts, cotangents)


selective_scan.defvjp(_selective_fwd, _selective_bwd)
