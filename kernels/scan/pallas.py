"""Pallas forward kernels for the SSM scans (backward passes: see api.py).

SSD (Mamba-2). The sequence is cut into chunks of T positions; per chunk and head, with the
in-chunk log-decay `cum` (cumsum of dt·A, computed outside the kernel) the kernel does four
matmuls: C·Bᵀ (T×T, masked by the decay), (C·Bᵀ ∘ decay)·(dt·x) (T×P), C·hᵀ (T×P, the carried
state's contribution) and (decay-to-end ∘ dt·x)ᵀ·B (P×N, the state update). The fp32 state:
  * TPU: grid (batch, head blocks, chunks), the chunk axis last and "arbitrary"
    (sequential); the state lives in VMEM scratch across the chunk steps.
  * GPU (Triton lowering): grid (batch, heads); the chunks are a `fori_loop` inside the
    program with the state as the loop carry (Triton programs cannot pass state between grid
    steps). Blocks are padded to powers of two ≥ 16 (Triton's `dot`).

Selective scan (Mamba-1). A time loop (`fori_loop`) vectorised over a block of channels: the
state is an (N, channels) tile kept on chip; each step reads one row of x/dt (1, channels) and
one column of B/C (N, 1). Same TPU (chunk grid axis + scratch) / GPU (in-program loop) split.

Inputs may be float32 or bfloat16; all arithmetic inside is float32 (HIGHEST precision dots).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _dispatch
from kernels.scan import reference

__all__ = ["selective_scan_pallas", "ssd_pallas"]

_F32 = jnp.float32
_HI = lax.Precision.HIGHEST


def _dot(a, b):
    return jnp.dot(a, b, preferred_element_type=_F32, precision=_HI)


def _pad_axis(a, axis, size):
    if a.shape[axis] == size:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, widths)


# ----------------------------------------------------------------------------- SSD


def _ssd_chunk(xdt_TxP, cum_Tx1, cum_1xT, last_1x1, B_TxN, C_TxN, h_PxN):
    """One chunk of one head: returns (y_TxP, new h_PxN). All float32."""
    T = xdt_TxP.shape[0]
    causal_TxT = lax.broadcasted_iota(jnp.int32, (T, T), 0) >= lax.broadcasted_iota(
        jnp.int32, (T, T), 1
    )
    seg_TxT = jnp.where(causal_TxT, cum_Tx1 - cum_1xT, 0.0)
    decay_TxT = jnp.where(causal_TxT, jnp.exp(seg_TxT), 0.0)
    scores_TxT = _dot(C_TxN, B_TxN.T) * decay_TxT
    y_TxP = _dot(scores_TxT, xdt_TxP) + jnp.exp(cum_Tx1) * _dot(C_TxN, h_PxN.T)
    to_end_Tx1 = jnp.exp(last_1x1 - cum_Tx1)
    h_PxN = jnp.exp(last_1x1) * h_PxN + _dot((xdt_TxP * to_end_Tx1).T, B_TxN)
    return y_TxP, h_PxN


def _ssd_kernel(
    x_ref, dt_ref, cumc_ref, cumr_ref, B_ref, C_ref, h0_ref, y_ref, h_ref, *scratch, target
):
    """Refs: x/dt/cum_col/y [hb, nc_blk, T, ·], cum_row [hb, nc_blk, 1, T], B/C [nc_blk, T, N],
    h0/h [hb, P, N]; nc_blk = 1 on TPU (chunk = grid axis 2), all chunks on GPU."""
    hb, nc_blk, T = x_ref.shape[:3]

    def chunk(c, j, h_PxN):
        xdt = x_ref[j, c].astype(_F32) * dt_ref[j, c]
        last = cumc_ref[j, c, pl.ds(T - 1, 1), :]
        y, h_PxN = _ssd_chunk(
            xdt,
            cumc_ref[j, c],
            cumr_ref[j, c],
            last,
            B_ref[c].astype(_F32),
            C_ref[c].astype(_F32),
            h_PxN,
        )
        y_ref[j, c] = y.astype(y_ref.dtype)
        return h_PxN

    if target == "tpu":
        (state_ref,) = scratch
        c_idx = pl.program_id(2)

        @pl.when(c_idx == 0)
        def _():
            state_ref[...] = h0_ref[...].astype(_F32)

        for j in range(hb):
            state_ref[j] = chunk(0, j, state_ref[j])

        @pl.when(c_idx == pl.num_programs(2) - 1)
        def _():
            h_ref[...] = state_ref[...]

    else:
        for j in range(hb):
            h = lax.fori_loop(0, nc_blk, lambda c, h, j=j: chunk(c, j, h), h0_ref[j].astype(_F32))
            h_ref[j] = h


def _head_block(heads_per_group, target):
    if target == "gpu":
        return 1
    for hb in (8, 4, 2):
        if heads_per_group % hb == 0:
            return hb
    return 1


@functools.partial(jax.jit, static_argnames=("chunk_size", "interpret", "target"))
def ssd_pallas(
    x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, h0_BxHxPxN, *, chunk_size, interpret, target
):
    """The SSD forward as a Pallas kernel. Returns (y_BxLxHxP, h_BxHxPxN float32)."""
    Bsz, L, H, P = x_BxLxHxP.shape
    G, N = B_BxLxGxN.shape[2:]
    T = chunk_size if target == "gpu" else min(chunk_size, L)
    x, dt, cum, Bm, Cm = reference.ssd_chunk_inputs(
        x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, T
    )
    nc = x.shape[1]
    # Kernel layouts: heads before chunks, positions-by-features tiles.
    x = jnp.transpose(x, (0, 3, 1, 2, 4)).astype(x_BxLxHxP.dtype)  # [B, H, nc, T, P]
    dt = jnp.transpose(dt, (0, 3, 1, 2))[..., None]  # [B, H, nc, T, 1]
    cum_col = jnp.transpose(cum, (0, 3, 1, 2))[..., None]  # [B, H, nc, T, 1]
    cum_row = jnp.swapaxes(cum_col, -1, -2)  # [B, H, nc, 1, T]
    Bm = jnp.transpose(Bm, (0, 3, 1, 2, 4)).astype(B_BxLxGxN.dtype)  # [B, G, nc, T, N]
    Cm = jnp.transpose(Cm, (0, 3, 1, 2, 4)).astype(C_BxLxGxN.dtype)
    h0 = h0_BxHxPxN.astype(_F32)
    Pp, Np = P, N
    if target == "gpu":  # Triton: power-of-two blocks, dot dims >= 16
        Pp, Np = (max(16, _dispatch.next_pow2(n)) for n in (P, N))
        x, h0 = _pad_axis(x, 4, Pp), _pad_axis(_pad_axis(h0, 2, Pp), 3, Np)
        Bm, Cm = _pad_axis(Bm, 4, Np), _pad_axis(Cm, 4, Np)

    hpg = H // G
    hb = _head_block(hpg, target)
    group = lambda i: (i * hb) // hpg
    if target == "tpu":
        grid = (Bsz, H // hb, nc)
        nb = 1
        head_map = lambda b, i, c: (b, i, c, 0, 0)
        group_map = lambda b, i, c: (b, group(i), c, 0, 0)
        state_map = lambda b, i, c: (b, i, 0, 0)
        semantics = ("parallel", "parallel", "arbitrary")
        scratch = [_tpu_vmem((hb, Pp, Np))]
    else:
        grid = (Bsz, H // hb)
        nb = nc
        head_map = lambda b, i: (b, i, 0, 0, 0)
        group_map = lambda b, i: (b, group(i), 0, 0, 0)
        state_map = lambda b, i: (b, i, 0, 0)
        semantics = ("parallel", "parallel")
        scratch = []
    sq = pl.squeezed
    in_specs = [
        pl.BlockSpec((sq, hb, nb, T, Pp), head_map),
        pl.BlockSpec((sq, hb, nb, T, 1), head_map),
        pl.BlockSpec((sq, hb, nb, T, 1), head_map),
        pl.BlockSpec((sq, hb, nb, 1, T), head_map),
        pl.BlockSpec((sq, sq, nb, T, Np), group_map),
        pl.BlockSpec((sq, sq, nb, T, Np), group_map),
        pl.BlockSpec((sq, hb, Pp, Np), state_map),
    ]
    out_specs = [
        pl.BlockSpec((sq, hb, nb, T, Pp), head_map),
        pl.BlockSpec((sq, hb, Pp, Np), state_map),
    ]
    y, h = pl.pallas_call(
        functools.partial(_ssd_kernel, target=target),
        out_shape=[
            jax.ShapeDtypeStruct((Bsz, H, nc, T, Pp), x_BxLxHxP.dtype),
            jax.ShapeDtypeStruct((Bsz, H, Pp, Np), _F32),
        ],
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        scratch_shapes=scratch,
        compiler_params=_dispatch.compiler_params(target, semantics),
        interpret=interpret,
        name="ssd_chunked",
    )(x, dt, cum_col, cum_row, Bm, Cm, h0)
    y_BxLxHxP = jnp.transpose(y[..., :P], (0, 2, 3, 1, 4)).reshape(Bsz, nc * T, H, P)[:, :L]
    return y_BxLxHxP, h[:, :, :P, :N]


def _tpu_vmem(shape):
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.VMEM(shape, _F32)


# ----------------------------------------------------------------------------- Mamba-1


def _selective_kernel(x_ref, dt_ref, A_ref, B_ref, C_ref, h0_ref, y_ref, h_ref, *scratch, target):
    """Refs: x/dt/y [nc_blk, T, 1, d], A/h0/h [N, d], B/C [nc_blk, T, N, 1]."""
    nc_blk, T = x_ref.shape[:2]
    A_Nxd = A_ref[...].astype(_F32)

    def step(c, t, h_Nxd):
        dt_1xd = dt_ref[c, t].astype(_F32)
        h_Nxd = jnp.exp(dt_1xd * A_Nxd) * h_Nxd + B_ref[c, t].astype(_F32) * (
            dt_1xd * x_ref[c, t].astype(_F32)
        )
        y_ref[c, t] = jnp.sum(C_ref[c, t].astype(_F32) * h_Nxd, axis=0, keepdims=True).astype(
            y_ref.dtype
        )
        return h_Nxd

    def chunk(c, h_Nxd):
        return lax.fori_loop(0, T, lambda t, h: step(c, t, h), h_Nxd)

    if target == "tpu":
        (state_ref,) = scratch
        c_idx = pl.program_id(2)

        @pl.when(c_idx == 0)
        def _():
            state_ref[...] = h0_ref[...].astype(_F32)

        state_ref[...] = chunk(0, state_ref[...])

        @pl.when(c_idx == pl.num_programs(2) - 1)
        def _():
            h_ref[...] = state_ref[...]

    else:
        h_ref[...] = lax.fori_loop(0, nc_blk, chunk, h0_ref[...].astype(_F32))


def _channel_block(D, target):
    if target == "gpu":
        return min(64, _dispatch.next_pow2(D))
    for bd in (256, 128):  # rows are (1, bd) tiles padded to 8 sublanes in VMEM: keep bd small
        if D % bd == 0:
            return bd
    return D


@functools.partial(jax.jit, static_argnames=("chunk_size", "interpret", "target"))
def selective_scan_pallas(
    x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN, h0_BxDxN, *, chunk_size, interpret, target
):
    """The selective-scan forward as a Pallas kernel. Returns (y_BxLxD, h_BxDxN float32)."""
    Bsz, L, D = x_BxLxD.shape
    N = A_DxN.shape[1]
    T = min(chunk_size, L) if target == "tpu" else L  # GPU: one in-program loop over L
    nc = -(-L // T)
    Lp = nc * T
    bd = _channel_block(D, target)
    Dp = -(-D // bd) * bd
    Np = _dispatch.next_pow2(N) if target == "gpu" else N

    def rows(a):  # [B, L, D] -> [B, nc, T, 1, Dp], padded with zeros (dt = 0: no change)
        a = _pad_axis(_pad_axis(a, 1, Lp), 2, Dp)
        return a.reshape(Bsz, nc, T, 1, Dp)

    def cols(a):  # [B, L, N] -> [B, nc, T, Np, 1]
        a = _pad_axis(_pad_axis(a, 1, Lp), 2, Np)
        return a.reshape(Bsz, nc, T, Np, 1)

    A = _pad_axis(_pad_axis(A_DxN.astype(_F32).T, 0, Np), 1, Dp)  # [Np, Dp]
    h0 = _pad_axis(_pad_axis(jnp.swapaxes(h0_BxDxN.astype(_F32), 1, 2), 1, Np), 2, Dp)
    sq = pl.squeezed
    if target == "tpu":
        grid = (Bsz, Dp // bd, nc)
        nb = 1
        row_map = lambda b, i, c: (b, c, 0, 0, i)
        col_map = lambda b, i, c: (b, c, 0, 0, 0)
        A_map = lambda b, i, c: (0, i)
        state_map = lambda b, i, c: (b, 0, i)
        semantics = ("parallel", "parallel", "arbitrary")
        scratch = [_tpu_vmem((Np, bd))]
    else:
        grid = (Bsz, Dp // bd)
        nb = nc
        row_map = lambda b, i: (b, 0, 0, 0, i)
        col_map = lambda b, i: (b, 0, 0, 0, 0)
        A_map = lambda b, i: (0, i)
        state_map = lambda b, i: (b, 0, i)
        semantics = ("parallel", "parallel")
        scratch = []
    row_spec = pl.BlockSpec((sq, nb, T, 1, bd), row_map)
    col_spec = pl.BlockSpec((sq, nb, T, Np, 1), col_map)
    state_spec = pl.BlockSpec((sq, Np, bd), state_map)
    y, h = pl.pallas_call(
        functools.partial(_selective_kernel, target=target),
        out_shape=[
            jax.ShapeDtypeStruct((Bsz, nc, T, 1, Dp), x_BxLxD.dtype),
            jax.ShapeDtypeStruct((Bsz, Np, Dp), _F32),
        ],
        grid=grid,
        in_specs=[
            row_spec,
            row_spec,
            pl.BlockSpec((Np, bd), A_map),
            col_spec,
            col_spec,
            state_spec,
        ],
        out_specs=[row_spec, state_spec],
        scratch_shapes=scratch,
        compiler_params=_dispatch.compiler_params(target, semantics, num_warps=2),
        interpret=interpret,
        name="selective_scan",
    )(
        rows(x_BxLxD),
        rows(dt_BxLxD.astype(_F32)),
        A,
        cols(B_BxLxN),
        cols(C_BxLxN),
        h0,
    )
    y_BxLxD = y.reshape(Bsz, Lp, Dp)[:, :L, :D]
    return y_BxLxD, jnp.swapaxes(h[:, :N, :D], 1, 2)
