"""Dispatchers for the SSM scans: `selective_scan` (Mamba-1) and `ssd` (Mamba-2)."""

from __future__ import annotations

import jax.numpy as jnp

from kernels import _dispatch
from kernels.scan import reference

__all__ = ["selective_scan", "ssd"]

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
    problem = _pallas_dtype_problem(**arrays) or "the Pallas selective scan has not landed yet"
    impl = _dispatch.choose("selective_scan", implementation, interpret, problem)
    del impl
    return reference.selective_scan_sequential(
        x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN, h0_BxDxN=h0_BxDxN
    )


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
    problem = _pallas_dtype_problem(**arrays) or "the Pallas SSD kernel has not landed yet"
    impl = _dispatch.choose("ssd", implementation, interpret, problem)
    del impl
    return reference.ssd_chunked(
        x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, chunk_size=chunk_size, h0_BxHxPxN=h0_BxHxPxN
    )
