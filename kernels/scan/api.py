"""Dispatchers for the SSM scans: `selective_scan` (Mamba-1) and `ssd` (Mamba-2)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import _dispatch
from kernels.scan import pallas, reference

__all__ = ["selective_scan", "ssd"]

# Chunk sizes. SSD: positions per chunk of the Pallas kernel (the caller's `chunk_size`).
# Selective scan: positions per grid step of the TPU kernel (the state stays on chip across).
_SELECTIVE_CHUNK = 128
# The CPU backward recomputes through the chunked SSD with this chunk (fastest measured).
_CPU_SSD_GRAD_CHUNK = 32


# ----------------------------------------------------------------------------- XLA forms
# On CPU a sequential `lax.scan` is the fastest forward (no B·L·…·N intermediates). Its
# gradient: the scan's own autodiff (residuals kept from the forward) for the selective scan
# and for small SSD states; for SSD states above _CPU_SSD_SEQUENTIAL_GRAD_MAX elements per
# sequence, a recomputation through the chunked SSD form, whose backward is several times
# faster there (measured with `python -m benchmarks.scan`: mamba2-tiny 34 ms vs 160 ms).
# On GPU/TPU the chunked (matmul) forms are used throughout.
_CPU_SSD_SEQUENTIAL_GRAD_MAX = 1024


def _ssd_xla_cpu_grad_form(x, dt, A, Bm, Cm, h0):
    return reference.ssd_chunked(x, dt, A, Bm, Cm, chunk_size=_CPU_SSD_GRAD_CHUNK, h0_BxHxPxN=h0)


def _ssd_sequential(x, dt, A, Bm, Cm, h0):
    return reference.ssd_sequential(x, dt, A, Bm, Cm, h0_BxHxPxN=h0)


def _selective_sequential(x, dt, A, Bm, Cm, h0):
    return reference.selective_scan_sequential(x, dt, A, Bm, Cm, h0_BxDxN=h0)


def _selective_grad_form(x, dt, A, Bm, Cm, h0):
    return jax.checkpoint(_selective_sequential)(x, dt, A, Bm, Cm, h0)


def _recompute_bwd(grad_form, residuals, g):
    _, vjp = jax.vjp(grad_form, *residuals)
    return vjp(g)


@jax.custom_vjp
def _ssd_xla_cpu(x, dt, A, Bm, Cm, h0):
    return _ssd_sequential(x, dt, A, Bm, Cm, h0)


_ssd_xla_cpu.defvjp(
    lambda *a: (_ssd_xla_cpu(*a), a),
    functools.partial(_recompute_bwd, _ssd_xla_cpu_grad_form),
)


# ----------------------------------------------------------------------------- Pallas
# Backward passes: reference-based, by recomputation. The Pallas forward saves only its
# inputs; the backward differentiates the XLA chunked form (SSD) / the checkpointed
# sequential scan (selective scan) on them. No Pallas backward kernel.


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _ssd_pallas(x, dt, A, Bm, Cm, h0, chunk_size, interpret, target):
    return pallas.ssd_pallas(
        x, dt, A, Bm, Cm, h0, chunk_size=chunk_size, interpret=interpret, target=target
    )


def _ssd_pallas_fwd(x, dt, A, Bm, Cm, h0, chunk_size, interpret, target):
    out = _ssd_pallas(x, dt, A, Bm, Cm, h0, chunk_size, interpret, target)
    return out, (x, dt, A, Bm, Cm, h0)


def _ssd_pallas_bwd(chunk_size, interpret, target, residuals, g):
    form = lambda x, dt, A, Bm, Cm, h0: reference.ssd_chunked(
        x, dt, A, Bm, Cm, chunk_size=chunk_size, h0_BxHxPxN=h0
    )
    return _recompute_bwd(form, residuals, g)


_ssd_pallas.defvjp(_ssd_pallas_fwd, _ssd_pallas_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _selective_pallas(x, dt, A, Bm, Cm, h0, chunk_size, interpret, target):
    return pallas.selective_scan_pallas(
        x, dt, A, Bm, Cm, h0, chunk_size=chunk_size, interpret=interpret, target=target
    )


def _selective_pallas_fwd(x, dt, A, Bm, Cm, h0, chunk_size, interpret, target):
    out = _selective_pallas(x, dt, A, Bm, Cm, h0, chunk_size, interpret, target)
    return out, (x, dt, A, Bm, Cm, h0)


def _selective_pallas_bwd(chunk_size, interpret, target, residuals, g):
    return _recompute_bwd(_selective_grad_form, residuals, g)


_selective_pallas.defvjp(_selective_pallas_fwd, _selective_pallas_bwd)

_PALLAS_DTYPES = (jnp.float32, jnp.bfloat16)


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
):
    """Mamba-1 selective scan: h_t = exp(dt_t·A) ⊙ h_{t-1} + dt_t·x_t·B_t,  y_t = h_t·C_t.

    Args:
      x_BxLxD: inputs.  dt_BxLxD: positive step sizes (softplus applied by the caller).
      A_DxN: (negative) state matrix.  B_BxLxN, C_BxLxN: input/output projections.
      h0_BxDxN: initial state (zeros if None).
      implementation: "auto" | "xla" | "pallas"; interpret: run Pallas in interpret mode.
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
    arrays = dict(x_BxLxD=x_BxLxD, dt_BxLxD=dt_BxLxD, A_DxN=A_DxN, B_BxLxN=B_BxLxN)
    arrays.update(C_BxLxN=C_BxLxN, h0_BxDxN=h0_BxDxN)
    _check_float(**arrays)
    problem = _pallas_dtype_problem(**arrays)
    h0 = jnp.zeros((Bsz, D, N), jnp.float32) if h0_BxDxN is None else h0_BxDxN
    args = (x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN, h0)

    def pallas_form(target, interpret=False):
        return lambda *a: _selective_pallas(*a, _SELECTIVE_CHUNK, interpret, target)

    fn = _dispatch.select(
        "selective_scan",
        implementation,
        interpret,
        xla={"cpu": _selective_sequential, "default": _selective_chunked},
        pallas=pallas_form,
        unsupported=lambda target: problem,
    )
    return fn(*args)


def _selective_chunked(x, dt, A, Bm, Cm, h0):
    return reference.selective_scan_chunked(x, dt, A, Bm, Cm, h0_BxDxN=h0)


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
):
    """Mamba-2 SSD scan: h_t = exp(dt_t·A_h) h_{t-1} + dt_t x_t ⊗ B_t,  y_t = h_t C_t.

    Args:
      x_BxLxHxP: inputs per head.  dt_BxLxH: positive step sizes.  A_H: (negative) decay
      rate per head.  B_BxLxGxN, C_BxLxGxN: projections shared by the H // G heads of a
      group (G divides H).  chunk_size: positions per chunk of the chunked algorithm.
      h0_BxHxPxN: initial state (zeros if None).
      implementation: "auto" | "xla" | "pallas"; interpret: run Pallas in interpret mode.
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
    arrays = dict(x_BxLxHxP=x_BxLxHxP, dt_BxLxH=dt_BxLxH, A_H=A_H, B_BxLxGxN=B_BxLxGxN)
    arrays.update(C_BxLxGxN=C_BxLxGxN, h0_BxHxPxN=h0_BxHxPxN)
    _check_float(**arrays)
    problem = _pallas_dtype_problem(**arrays)

    def unsupported(target):
        if (
            problem is None
            and target == "gpu"
            and (chunk_size < 16 or chunk_size & (chunk_size - 1))
        ):
            return f"the GPU kernel needs chunk_size a power of two >= 16, got {chunk_size}"
        return problem

    def pallas_form(target, interpret=False):
        return lambda *a: _ssd_pallas(*a, chunk_size, interpret, target)

    def chunked(x, dt, A, Bm, Cm, h0):
        return reference.ssd_chunked(x, dt, A, Bm, Cm, chunk_size=chunk_size, h0_BxHxPxN=h0)

    cpu = _ssd_sequential if H * P * N <= _CPU_SSD_SEQUENTIAL_GRAD_MAX else _ssd_xla_cpu
    h0 = jnp.zeros((Bsz, H, P, N), jnp.float32) if h0_BxHxPxN is None else h0_BxHxPxN
    args = (x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, h0)
    fn = _dispatch.select(
        "ssd",
        implementation,
        interpret,
        xla={"cpu": cpu, "default": chunked},
        pallas=pallas_form,
        unsupported=unsupported,
    )
    return fn(*args)
