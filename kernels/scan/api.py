"""Dispatchers for the SSM scans: `selective_scan` (Mamba-1) and `ssd` (Mamba-2).

Forms (chosen by the lowering platform, kernels._dispatch):
  CPU          XLA: a sequential `lax.scan` forward that keeps the state at every chunk start;
               the backward recomputes chunk by chunk in reverse (kernels.scan.xla). Small
               problems (B·L·state ≤ 2**20) use lax.scan's own autodiff, faster there.
  TPU, GPU     Pallas kernels, forward and backward (kernels.scan.pallas); "xla" there: the
               chunked parallel forms with the same chunk-boundary backward.
Otherwise gradients flow through `jax.custom_vjp`s whose residuals are the inputs and the
chunk start states: O(B·L/T·state) memory, never B·L·state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import _dispatch
from kernels.scan import pallas, reference, xla
from kernels.scan.pallas import SelectiveBlocks, SSDBlocks

__all__ = ["SSDBlocks", "SelectiveBlocks", "selective_scan", "ssd"]

# CPU forms (measured at the presets' scan shapes, batch 4 × 1024, forward + backward; see
# `python -m benchmarks.scan --sections model`): up to _CPU_AUTODIFF_MAX elements of B·L·state
# the sequential lax.scan with its own autodiff is fastest (its B·L·state residuals fit in
# cache: gauss-mamba-z512 7.6 ms against 8.6-9.0 ms); above it, the chunk-boundary backward
# (mamba-tiny 54 ms against 321 ms, mamba2-tiny 24 ms against 77 ms), whose memory stays
# O(B·L/T·state). SSD's sequential autodiff stays faster up to 2^22 elements (gauss-mamba2,
# 2^21: 9.2 ms against 11.7 ms on a quiet machine). Chunks: 64 positions for the selective
# scan; 32 for SSD states up to _CPU_SSD_SMALL_STATE elements per sequence (faster there),
# else 64 (fewer saved states for the large ones).
_CPU_AUTODIFF_MAX = 2**20
_CPU_SSD_AUTODIFF_MAX = 2**22
_CPU_SELECTIVE_CHUNK = 64
_CPU_SSD_SMALL_STATE = 16384
# Accelerators, implementation="xla": chunks of associative scans for the selective scan.
_SELECTIVE_CHUNK = 64

_PALLAS_DTYPES = (jnp.float32, jnp.bfloat16)


# ----------------------------------------------------------------------------- Pallas VJPs


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _ssd_pallas(x, dt, A, Bm, Cm, h0, blocks, target, interpret):
    y, h, _ = pallas.ssd_fwd(
        x, dt, A, Bm, Cm, h0, blocks=blocks, target=target, interpret=interpret
    )
    return y, h


def _ssd_pallas_fwd(x, dt, A, Bm, Cm, h0, blocks, target, interpret):
    kw = dict(blocks=blocks, target=target, interpret=interpret)
    y, h, starts = pallas.ssd_fwd(x, dt, A, Bm, Cm, h0, **kw)
    return (y, h), (x, dt, A, Bm, Cm, h0, starts)


def _ssd_pallas_bwd(blocks, target, interpret, residuals, cotangents):
    x, dt, A, Bm, Cm, h0, starts = residuals
    kw = dict(blocks=blocks, target=target, interpret=interpret)
    *grads, dh0 = pallas.ssd_bwd(x, dt, A, Bm, Cm, starts, *cotangents, **kw)
    return (*grads, dh0.astype(h0.dtype))


_ssd_pallas.defvjp(_ssd_pallas_fwd, _ssd_pallas_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _selective_pallas(x, dt, A, Bm, Cm, h0, blocks, target, interpret):
    kw = dict(blocks=blocks, target=target, interpret=interpret)
    return pallas.selective_scan_fwd(x, dt, A, Bm, Cm, h0, save=False, **kw)


def _selective_pallas_fwd(x, dt, A, Bm, Cm, h0, blocks, target, interpret):
    kw = dict(blocks=blocks, target=target, interpret=interpret)
    y, h, saved = pallas.selective_scan_fwd(x, dt, A, Bm, Cm, h0, save=True, **kw)
    return (y, h), (x, dt, A, Bm, Cm, h0, saved)


def _selective_pallas_bwd(blocks, target, interpret, residuals, cotangents):
    x, dt, A, Bm, Cm, h0, saved = residuals
    kw = dict(blocks=blocks, target=target, interpret=interpret)
    *grads, dh0 = pallas.selective_scan_bwd(x, dt, A, Bm, Cm, saved, *cotangents, **kw)
    return (*grads, dh0.astype(h0.dtype))


_selective_pallas.defvjp(_selective_pallas_fwd, _selective_pallas_bwd)


# ----------------------------------------------------------------------------- checks


def _shape_error(name, array, expected):
    return ValueError(f"{name} has shape {tuple(array.shape)}; expected {expected}")


def _check_float(**arrays):
    for name, a in arrays.items():
        if a is not None and not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")


def _pallas_dtype_problem(**arrays):
    for name, a in arrays.items():
        if a is not None and a.dtype not in _PALLAS_DTYPES:
            return f"{name} has dtype {a.dtype} (the kernel takes float32 or bfloat16)"
    return None


def _blocks_problem(blocks, check):
    try:
        check()
    except ValueError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- public


def selective_scan(
    x_BxLxD,
    dt_BxLxD,
    A_DxN,
    B_BxLxN,
    C_BxLxN,
    *,
    h0_BxDxN=None,
    implementation="auto",
    interpret=False,
    blocks=None,
):
    """Mamba-1 selective scan: h_t = exp(dt_t·A) ⊙ h_{t-1} + dt_t·x_t·B_t,  y_t = h_t·C_t.

    Args:
      x_BxLxD: inputs.  dt_BxLxD: positive step sizes (softplus applied by the caller).
      A_DxN: (negative) state matrix.  B_BxLxN, C_BxLxN: input/output projections.
      h0_BxDxN: initial state (zeros if None).
      implementation: "auto" | "xla" | "pallas"; interpret: run Pallas in interpret mode.
      blocks: `SelectiveBlocks` for the Pallas kernels (None: defaults from the shapes).
    Returns:
      (y_BxLxD in x's dtype, final state h_BxDxN in float32). The D skip and the gate are
      the caller's.
    """
    if x_BxLxD.ndim != 3:
        raise _shape_error("x_BxLxD", x_BxLxD, "[B, L, D]")
    Bsz, L, D = x_BxLxD.shape
    if L < 1:
        raise ValueError("x_BxLxD has length 0; the scan needs at least one position")
    if A_DxN.ndim != 2 or A_DxN.shape[0] != D:
        raise _shape_error("A_DxN", A_DxN, f"[D={D}, N]")
    N = A_DxN.shape[1]
    for name, a, want in (
        ("dt_BxLxD", dt_BxLxD, (Bsz, L, D)),
        ("B_BxLxN", B_BxLxN, (Bsz, L, N)),
        ("C_BxLxN", C_BxLxN, (Bsz, L, N)),
        ("h0_BxDxN", h0_BxDxN, (Bsz, D, N)),
    ):
        if a is not None and tuple(a.shape) != want:
            raise _shape_error(name, a, list(want))
    if blocks is not None and not isinstance(blocks, SelectiveBlocks):
        raise TypeError(f"blocks must be a SelectiveBlocks or None, got {type(blocks).__name__}")
    arrays = dict(x_BxLxD=x_BxLxD, dt_BxLxD=dt_BxLxD, A_DxN=A_DxN, B_BxLxN=B_BxLxN)
    arrays.update(C_BxLxN=C_BxLxN, h0_BxDxN=h0_BxDxN)
    _check_float(**arrays)
    dtype_problem = _pallas_dtype_problem(**arrays)

    def target_blocks(target):
        if blocks is not None:
            return blocks
        return SelectiveBlocks.default(Bsz, L, D, N, target, x_BxLxD.dtype)

    def unsupported(target):
        b = target_blocks(target)
        return dtype_problem or _blocks_problem(b, lambda: b.check(D, target))

    def pallas_form(target, interpret=False):
        b = target_blocks(target)
        return lambda *a: _selective_pallas(*a, b, target, interpret)

    h0 = jnp.zeros((Bsz, D, N), jnp.float32) if h0_BxDxN is None else h0_BxDxN
    if Bsz * L * D * N <= _CPU_AUTODIFF_MAX:
        cpu = lambda *a: reference.selective_scan_sequential(*a[:5], h0_BxDxN=a[5])
    else:
        cpu = lambda *a: xla.selective_scan(*a, _CPU_SELECTIVE_CHUNK, "sequential")
    fn = _dispatch.select(
        "selective_scan",
        implementation,
        interpret,
        xla={
            "cpu": cpu,
            "default": lambda *a: xla.selective_scan(*a, _SELECTIVE_CHUNK, "chunked"),
        },
        pallas=pallas_form,
        unsupported=unsupported,
    )
    return fn(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN, h0)


def ssd(
    x_BxLxHxP,
    dt_BxLxH,
    A_H,
    B_BxLxGxN,
    C_BxLxGxN,
    *,
    chunk_size=64,
    h0_BxHxPxN=None,
    implementation="auto",
    interpret=False,
    blocks=None,
):
    """Mamba-2 SSD scan: h_t = exp(dt_t·A_h) h_{t-1} + dt_t x_t ⊗ B_t,  y_t = h_t C_t.

    Args:
      x_BxLxHxP: inputs per head.  dt_BxLxH: positive step sizes.  A_H: (negative) decay
      rate per head.  B_BxLxGxN, C_BxLxGxN: projections shared by the H // G heads of a
      group (G divides H).  chunk_size: positions per chunk of the chunked algorithm (and of
      the backward's recomputation); the Pallas kernels use it where the target can.
      h0_BxHxPxN: initial state (zeros if None).
      implementation: "auto" | "xla" | "pallas"; interpret: run Pallas in interpret mode.
      blocks: `SSDBlocks` for the Pallas kernels (None: defaults from the shapes).
    Returns:
      (y_BxLxHxP in x's dtype, final state h_BxHxPxN in float32).
    """
    if x_BxLxHxP.ndim != 4:
        raise _shape_error("x_BxLxHxP", x_BxLxHxP, "[B, L, H, P]")
    Bsz, L, H, P = x_BxLxHxP.shape
    if L < 1:
        raise ValueError("x_BxLxHxP has length 0; the scan needs at least one position")
    if B_BxLxGxN.ndim != 4:
        raise _shape_error("B_BxLxGxN", B_BxLxGxN, "[B, L, G, N]")
    G, N = B_BxLxGxN.shape[2:]
    if G < 1 or H % G:
        raise ValueError(f"B_BxLxGxN has G={G} groups, which must divide the H={H} heads")
    for name, a, want in (
        ("dt_BxLxH", dt_BxLxH, (Bsz, L, H)),
        ("A_H", A_H, (H,)),
        ("B_BxLxGxN", B_BxLxGxN, (Bsz, L, G, N)),
        ("C_BxLxGxN", C_BxLxGxN, (Bsz, L, G, N)),
        ("h0_BxHxPxN", h0_BxHxPxN, (Bsz, H, P, N)),
    ):
        if a is not None and tuple(a.shape) != want:
            raise _shape_error(name, a, list(want))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if blocks is not None and not isinstance(blocks, SSDBlocks):
        raise TypeError(f"blocks must be an SSDBlocks or None, got {type(blocks).__name__}")
    arrays = dict(x_BxLxHxP=x_BxLxHxP, dt_BxLxH=dt_BxLxH, A_H=A_H, B_BxLxGxN=B_BxLxGxN)
    arrays.update(C_BxLxGxN=C_BxLxGxN, h0_BxHxPxN=h0_BxHxPxN)
    _check_float(**arrays)
    dtype_problem = _pallas_dtype_problem(**arrays)

    def target_blocks(target):
        if blocks is not None:
            return blocks
        return SSDBlocks.default(Bsz, L, H, P, G, N, chunk_size, target)

    def unsupported(target):
        b = target_blocks(target)
        return dtype_problem or _blocks_problem(b, lambda: b.check(L, H, G, target))

    def pallas_form(target, interpret=False):
        b = target_blocks(target)
        return lambda *a: _ssd_pallas(*a, b, target, interpret)

    h0 = jnp.zeros((Bsz, H, P, N), jnp.float32) if h0_BxHxPxN is None else h0_BxHxPxN
    if Bsz * L * H * P * N <= _CPU_SSD_AUTODIFF_MAX:
        cpu = lambda *a: reference.ssd_sequential(*a[:5], h0_BxHxPxN=a[5])
    else:
        T = 32 if H * P * N <= _CPU_SSD_SMALL_STATE else 64
        cpu = lambda *a: xla.ssd(*a, T, "sequential")
    fn = _dispatch.select(
        "ssd",
        implementation,
        interpret,
        xla={
            "cpu": cpu,
            "default": lambda *a: xla.ssd(*a, chunk_size, "chunked"),
        },
        pallas=pallas_form,
        unsupported=unsupported,
    )
    return fn(x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, h0)
