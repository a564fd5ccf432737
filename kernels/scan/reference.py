"""Plain-JAX scans: the sequential oracle and the parallel XLA forms.

Mamba-1 selective scan (per batch, channel d, state n):
  h_t = exp(dt_t·A) ⊙ h_{t-1} + (dt_t·x_t) B_t,   y_t = h_t · C_t.
Mamba-2 SSD (per batch, head h; A_h scalar, B/C shared by the heads of a group):
  h_t = exp(dt_t·A_h) h_{t-1} + dt_t x_t ⊗ B_t,   y_t = h_t C_t.

Every function computes in float32, returns `y` in the dtype of `x` and the final state in
float32. `dt` is already positive (the caller applies softplus); the D skip and the gate are
the caller's.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = [
    "selective_scan_associative",
    "selective_scan_chunked",
    "selective_scan_sequential",
    "ssd_associative",
    "ssd_chunk_inputs",
    "ssd_chunked",
    "ssd_sequential",
]

_F32 = jnp.float32


def _f32(*arrays):
    return tuple(a.astype(_F32) for a in arrays)


# ----------------------------------------------------------------------------- Mamba-1


def _selective_h0(x_BxLxD, A_DxN, h0_BxDxN):
    B, _, D = x_BxLxD.shape
    if h0_BxDxN is None:
        return jnp.zeros((B, D, A_DxN.shape[1]), _F32)
    return h0_BxDxN.astype(_F32)


def selective_scan_sequential(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN, *, h0_BxDxN=None):
    """The oracle: one `lax.scan` step per position. Returns (y_BxLxD, h_BxDxN float32)."""
    h_BxDxN = _selective_h0(x_BxLxD, A_DxN, h0_BxDxN)
    x, dt, A, Bm, Cm = _f32(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN)

    def step(h_BxDxN, inputs):
        x_BxD, dt_BxD, B_BxN, C_BxN = inputs
        decay_BxDxN = jnp.exp(dt_BxD[:, :, None] * A[None])
        h_BxDxN = decay_BxDxN * h_BxDxN + (dt_BxD * x_BxD)[:, :, None] * B_BxN[:, None, :]
        return h_BxDxN, jnp.einsum("bdn,bn->bd", h_BxDxN, C_BxN)

    time_major = [jnp.swapaxes(a, 0, 1) for a in (x, dt, Bm, Cm)]
    h_BxDxN, y_LxBxD = lax.scan(step, h_BxDxN, time_major)
    return jnp.swapaxes(y_LxBxD, 0, 1).astype(x_BxLxD.dtype), h_BxDxN


def _combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def _selective_parallel(x, dt, A, Bm, Cm, h_BxDxN):
    """Associative scan over axis 1 of float32 inputs; returns (y_BxLxD, h_BxDxN)."""
    decay_BxLxDxN = jnp.exp(dt[..., None] * A[None, None])
    inject_BxLxDxN = (dt * x)[..., None] * Bm[:, :, None, :]
    decay_BxLxDxN, inject_BxLxDxN = lax.associative_scan(
        _combine, (decay_BxLxDxN, inject_BxLxDxN), axis=1
    )
    h_BxLxDxN = decay_BxLxDxN * h_BxDxN[:, None] + inject_BxLxDxN
    y_BxLxD = jnp.einsum("bldn,bln->bld", h_BxLxDxN, Cm)
    return y_BxLxD, h_BxLxDxN[:, -1]


def selective_scan_associative(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN, *, h0_BxDxN=None):
    """`lax.associative_scan` over the whole length (memory B·L·D·N)."""
    h_BxDxN = _selective_h0(x_BxLxD, A_DxN, h0_BxDxN)
    y, h = _selective_parallel(*_f32(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN), h_BxDxN)
    return y.astype(x_BxLxD.dtype), h


def selective_scan_chunked(
    x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN, *, h0_BxDxN=None, chunk_size=64
):
    """A sequential `lax.scan` over chunks, an associative scan inside each chunk.

    The length is padded to a multiple of `chunk_size` with dt = 0 (decay 1, no input), which
    leaves the state unchanged.
    """
    B, L, D = x_BxLxD.shape
    h_BxDxN = _selective_h0(x_BxLxD, A_DxN, h0_BxDxN)
    x, dt, A, Bm, Cm = _f32(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN)
    T = min(chunk_size, L)
    pad = -L % T
    if pad:
        x, dt, Bm, Cm = (jnp.pad(a, ((0, 0), (0, pad), (0, 0))) for a in (x, dt, Bm, Cm))
    nc = (L + pad) // T

    def to_chunks(a):  # [B, L, F] -> [nc, B, T, F]
        return jnp.swapaxes(a.reshape(B, nc, T, a.shape[-1]), 0, 1)

    def step(h_BxDxN, inputs):
        y_BxTxD, h_BxDxN = _selective_parallel(*inputs[:2], A, *inputs[2:], h_BxDxN)
        return h_BxDxN, y_BxTxD

    h_BxDxN, y = lax.scan(step, h_BxDxN, [to_chunks(a) for a in (x, dt, Bm, Cm)])
    y_BxLxD = jnp.swapaxes(y, 0, 1).reshape(B, nc * T, D)[:, :L]
    return y_BxLxD.astype(x_BxLxD.dtype), h_BxDxN


# ----------------------------------------------------------------------------- Mamba-2


def _heads_of_groups(a_BxLxGxN, H):
    """Repeats group-shared B/C over the H // G heads of each group: [B, L, H, N]."""
    G = a_BxLxGxN.shape[2]
    return jnp.repeat(a_BxLxGxN, H // G, axis=2)


def _ssd_h0(x_BxLxHxP, B_BxLxGxN, h0_BxHxPxN):
    B, _, H, P = x_BxLxHxP.shape
    if h0_BxHxPxN is None:
        return jnp.zeros((B, H, P, B_BxLxGxN.shape[-1]), _F32)
    return h0_BxHxPxN.astype(_F32)


def ssd_sequential(x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, *, h0_BxHxPxN=None):
    """The oracle: one `lax.scan` step per position. Returns (y_BxLxHxP, h_BxHxPxN float32)."""
    H = x_BxLxHxP.shape[2]
    h_BxHxPxN = _ssd_h0(x_BxLxHxP, B_BxLxGxN, h0_BxHxPxN)
    x, dt, A = _f32(x_BxLxHxP, dt_BxLxH, A_H)
    Bm, Cm = (_heads_of_groups(a.astype(_F32), H) for a in (B_BxLxGxN, C_BxLxGxN))

    def step(h_BxHxPxN, inputs):
        x_BxHxP, dt_BxH, B_BxHxN, C_BxHxN = inputs
        decay_BxH = jnp.exp(dt_BxH * A[None])
        inject_BxHxPxN = (dt_BxH[..., None] * x_BxHxP)[..., None] * B_BxHxN[:, :, None, :]
        h_BxHxPxN = decay_BxH[..., None, None] * h_BxHxPxN + inject_BxHxPxN
        return h_BxHxPxN, jnp.einsum("bhpn,bhn->bhp", h_BxHxPxN, C_BxHxN)

    time_major = [jnp.swapaxes(a, 0, 1) for a in (x, dt, Bm, Cm)]
    h_BxHxPxN, y_LxBxHxP = lax.scan(step, h_BxHxPxN, time_major)
    return jnp.swapaxes(y_LxBxHxP, 0, 1).astype(x_BxLxHxP.dtype), h_BxHxPxN


def ssd_associative(x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, *, h0_BxHxPxN=None):
    """`lax.associative_scan` over the whole length (memory B·L·H·P·N)."""
    H = x_BxLxHxP.shape[2]
    h_BxHxPxN = _ssd_h0(x_BxLxHxP, B_BxLxGxN, h0_BxHxPxN)
    x, dt, A = _f32(x_BxLxHxP, dt_BxLxH, A_H)
    Bm, Cm = (_heads_of_groups(a.astype(_F32), H) for a in (B_BxLxGxN, C_BxLxGxN))
    decay_BxLxHx1x1 = jnp.exp(dt * A[None, None])[..., None, None]
    inject_BxLxHxPxN = (dt[..., None] * x)[..., None] * Bm[:, :, :, None, :]
    decay, inject = lax.associative_scan(_combine, (decay_BxLxHx1x1, inject_BxLxHxPxN), axis=1)
    h_BxLxHxPxN = decay * h_BxHxPxN[:, None] + inject
    y_BxLxHxP = jnp.einsum("blhpn,blhn->blhp", h_BxLxHxPxN, Cm)
    return y_BxLxHxP.astype(x_BxLxHxP.dtype), h_BxLxHxPxN[:, -1]


def ssd_chunk_inputs(x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, chunk_size):
    """Pads to whole chunks (dt = 0: decay 1, no input) and computes the in-chunk cumsums.

    Returns float32 (x_BxCxTxHxP, dt_BxCxTxH, cum_BxCxTxH, B_BxCxTxGxN, C_BxCxTxGxN) with C
    chunks of T = chunk_size positions; cum is the inclusive cumulative sum of dt·A in each
    chunk (the log-decay from the chunk start). Shared by the XLA and Pallas forms.
    """
    B, L = x_BxLxHxP.shape[:2]
    T = chunk_size
    pad = -L % T
    nc = (L + pad) // T
    x, dt, Bm, Cm = _f32(x_BxLxHxP, dt_BxLxH, B_BxLxGxN, C_BxLxGxN)

    def chunk(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return a.reshape(B, nc, T, *a.shape[2:])

    x, dt, Bm, Cm = (chunk(a) for a in (x, dt, Bm, Cm))
    cum_BxCxTxH = jnp.cumsum(dt * A_H.astype(_F32)[None, None, None], axis=2)
    return x, dt, cum_BxCxTxH, Bm, Cm


def ssd_chunked(x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, *, chunk_size=64, h0_BxHxPxN=None):
    """The SSD algorithm in XLA: in-chunk quadratic form, chunk states, a scan over chunks.

    Per chunk with in-chunk log-decay cum_t (inclusive cumsum of dt·A):
      y_t = Σ_{s≤t} exp(cum_t − cum_s) (C_t·B_s) dt_s x_s + exp(cum_t) h_prev C_t
      h   = exp(cum_T) h_prev + Σ_s exp(cum_T − cum_s) dt_s x_s ⊗ B_s
    """
    Bsz, L, H, P = x_BxLxHxP.shape
    h_BxHxPxN = _ssd_h0(x_BxLxHxP, B_BxLxGxN, h0_BxHxPxN)
    T = min(chunk_size, L)
    x, dt, cum, Bm, Cm = ssd_chunk_inputs(x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, T)
    Bm, Cm = (jnp.repeat(a, H // a.shape[3], axis=3) for a in (Bm, Cm))  # [B, C, T, H, N]
    nc = x.shape[1]
    xdt_BxCxTxHxP = x * dt[..., None]

    # In-chunk (diagonal block) outputs.
    causal_TxT = jnp.tril(jnp.ones((T, T), bool))
    seg = cum[:, :, :, None, :] - cum[:, :, None, :, :]  # [B, C, T(t), T(s), H]
    seg = jnp.where(causal_TxT[None, None, :, :, None], seg, -jnp.inf)
    scores = jnp.einsum("bcthn,bcshn->bctsh", Cm, Bm) * jnp.exp(seg)
    y = jnp.einsum("bctsh,bcshp->bcthp", scores, xdt_BxCxTxHxP)

    # Each chunk's own state contribution, then the carried state across chunks.
    to_end_BxCxTxH = jnp.exp(cum[:, :, -1:, :] - cum)
    states_BxCxHxPxN = jnp.einsum("bcth,bcthp,bcthn->bchpn", to_end_BxCxTxH, xdt_BxCxTxHxP, Bm)
    chunk_decay_BxCxH = jnp.exp(cum[:, :, -1, :])

    def carry(h_BxHxPxN, inputs):
        decay_BxH, state_BxHxPxN = inputs
        return decay_BxH[..., None, None] * h_BxHxPxN + state_BxHxPxN, h_BxHxPxN

    h_BxHxPxN, h_prev_CxBxHxPxN = lax.scan(
        carry,
        h_BxHxPxN,
        (jnp.swapaxes(chunk_decay_BxCxH, 0, 1), jnp.swapaxes(states_BxCxHxPxN, 0, 1)),
    )
    h_prev_BxCxHxPxN = jnp.swapaxes(h_prev_CxBxHxPxN, 0, 1)
    y = y + jnp.exp(cum)[..., None] * jnp.einsum("bchpn,bcthn->bcthp", h_prev_BxCxHxPxN, Cm)
    y_BxLxHxP = y.reshape(Bsz, nc * T, H, P)[:, :L]
    return y_BxLxHxP.astype(x_BxLxHxP.dtype), h_BxHxPxN
