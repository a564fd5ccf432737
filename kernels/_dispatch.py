"""The one place where a kernel implementation is chosen.

`implementation="xla"` runs the plain-JAX form; `"pallas"` runs the Pallas kernel (on CPU only
with `interpret=True`) and raises if it cannot; `"auto"` picks Pallas on GPU/TPU (or when
`interpret=True`) and XLA on CPU, and falls back to XLA — saying so once in the log — when the
kernel does not support the arguments.
"""

from __future__ import annotations

import functools
import logging

import jax

IMPLEMENTATIONS = ("auto", "xla", "pallas")
_log = logging.getLogger("kernels")


def platform() -> str:
    """'gpu', 'tpu' or 'cpu' for the default backend ('cuda'/'rocm' count as 'gpu')."""
    backend = jax.default_backend()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


@functools.cache
def _warn_once(message: str) -> None:
    _log.warning(message)


def choose(kernel: str, implementation: str, interpret: bool, unsupported: str | None) -> str:
    """Returns "xla" or "pallas" for `kernel`.

    `unsupported` is None when the Pallas kernel can run these arguments, else the reason.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{kernel}: implementation={implementation!r} is not one of {IMPLEMENTATIONS}"
        )
    if not isinstance(interpret, bool):
        raise TypeError(f"{kernel}: interpret must be a bool, got {interpret!r}")
    if implementation == "xla":
        return "xla"
    on_device = platform() in ("gpu", "tpu")
    if implementation == "pallas":
        if not (on_device or interpret):
            raise ValueError(
                f"{kernel}: implementation='pallas' needs a GPU or TPU; on {platform()} pass "
                "interpret=True (slow, for tests) or use implementation='xla'/'auto'."
            )
        if unsupported is not None:
            raise ValueError(
                f"{kernel}: implementation='pallas' cannot run these arguments: {unsupported}. "
                "Use implementation='xla' (or 'auto', which falls back)."
            )
        return "pallas"
    if not (on_device or interpret):
        return "xla"
    if unsupported is not None:
        _warn_once(f"{kernel}: Pallas kernel cannot run these arguments ({unsupported}); using XLA")
        return "xla"
    return "pallas"


def pallas_target(interpret: bool) -> str:
    """Which hardware form of a kernel to build: "tpu" or "gpu".

    TPU kernels carry state across a sequential ("arbitrary") grid axis in VMEM scratch; GPU
    kernels (Triton lowering: power-of-two blocks, no cross-program state) loop inside one
    program instead. Interpret mode on CPU builds the TPU form unless a test asks otherwise.
    """
    target = platform()
    if target in ("gpu", "tpu"):
        return target
    if not interpret:
        raise ValueError("Pallas kernels run on GPU/TPU, or on CPU with interpret=True")
    return "tpu"


def compiler_params(target: str, dimension_semantics: tuple[str, ...], *, num_warps: int = 4):
    """Compiler parameters for `pl.pallas_call` on `target`.

    GPU kernels use the Triton lowering explicitly (they are written for its programming
    model: whole-block values, `fori_loop` inside the program).
    """
    if target == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=dimension_semantics)
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=num_warps, num_stages=2)


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
