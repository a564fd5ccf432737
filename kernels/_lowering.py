"""Lowering for an accelerator from any machine: compile checks without the hardware.

    text = lower(jax.value_and_grad(loss), params, tokens, platform="tpu")
    kernel_calls(text)      # [KernelCall(target="tpu", name="ssd_fwd"), ...]

`lower` traces a function with shapes only (arrays or `jax.ShapeDtypeStruct`s) and runs the
JAX lowering for `platform` ("tpu", "cuda" or "cpu"), Pallas kernels included: Mosaic for TPU
(the chip description the lowering asks for is faked while lowering, see `fake_tpu_chip`),
Triton for CUDA. Nothing is compiled for the device, so errors that only the device compiler
finds (Mosaic layout passes, Triton's PTX generation) are not caught here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax

from kernels import _dispatch

__all__ = ["KernelCall", "fake_tpu_chip", "kernel_calls", "lower"]

PLATFORMS = ("tpu", "cuda", "cpu")
# Custom-call targets of Pallas kernels, per lowering.
_CALL_TARGETS = {
    "tpu_custom_call": "tpu",
    "__gpu$xla.gpu.triton": "gpu",
    "mosaic_gpu": "gpu",
    "mosaic_gpu_v2": "gpu",
}


class KernelCall(NamedTuple):
    target: str  # "tpu" | "gpu"
    name: str  # the `name=` given to `pl.pallas_call`


_TPU_KINDS = ("TPU v4", "TPU v5 lite", "TPU v5e", "TPU v5", "TPU v5p", "TPU v6 lite", "TPU v6e")


@contextlib.contextmanager
def fake_tpu_chip(device_kind: str = "TPU v5p") -> Iterator[None]:
    """While active, Mosaic's TPU lowering sees the chip `device_kind` on a non-TPU host.

    The lowering asks for the chip's generation and tile sizes (e.g. to pick a lowering of
    `sign` or of integer division); on a CPU host there is none. This registers the named
    chip for the host's device kind in `jax._src.pallas.mosaic.tpu_info` (the registry JAX
    keeps for device kinds it does not know; where this JAX has no per-chip constructor, the
    device kind that module reads is replaced instead) and undoes it afterwards.
    """
    from jax._src.pallas.mosaic import tpu_info

    if device_kind not in _TPU_KINDS:
        raise ValueError(f"device_kind={device_kind!r} is not one of {_TPU_KINDS}")
    host_kind = jax.devices()[0].device_kind
    if host_kind.startswith("TPU"):
        yield  # a real TPU: nothing to fake
        return
    undo = []
    for_chip = getattr(tpu_info, "get_tpu_info_for_chip", None)
    from_kind = getattr(tpu_info, "chip_version_from_device_kind", None)
    if for_chip is not None and from_kind is not None and hasattr(tpu_info, "registry"):
        chip = from_kind(device_kind)
        previous = tpu_info.registry.get(host_kind)
        tpu_info.registry[host_kind] = lambda: for_chip(chip, 1)
        undo.append(
            (lambda: tpu_info.registry.pop(host_kind, None))
            if previous is None
            else (lambda: tpu_info.registry.__setitem__(host_kind, previous))
        )
    else:  # older layouts: the info is built from the device kind the module reads
        owner = tpu_info if hasattr(tpu_info, "get_device_kind") else tpu_info.core
        for name, value in (("get_device_kind", device_kind), ("get_num_device_cores", 1)):
            if hasattr(owner, name):
                original = getattr(owner, name)
                setattr(owner, name, lambda value=value: value)
                undo.append(lambda owner=owner, name=name, f=original: setattr(owner, name, f))
    _clear_tpu_info_cache(tpu_info)
    try:
        yield
    finally:
        for step in reversed(undo):
            step()
        _clear_tpu_info_cache(tpu_info)


def _clear_tpu_info_cache(tpu_info):
    clear = getattr(tpu_info.get_tpu_info, "cache_clear", None)
    if clear is not None:
        clear()


def lower(fn: Callable, *args, platform: str, device_kind: str = "TPU v5p", **kwargs) -> str:
    """The StableHLO text of `jax.jit(fn)` lowered for `platform` ("tpu", "cuda", "cpu").

    `args` may be arrays or `jax.ShapeDtypeStruct`s (nothing runs); `kwargs` are passed to
    `fn` as static keyword arguments.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    jitted = jax.jit(lambda *a: fn(*a, **kwargs))  # a fresh function: nothing cached
    with _dispatch.lowering_for(platform):
        traced = jitted.trace(*args)
    chip = fake_tpu_chip(device_kind) if platform == "tpu" else contextlib.nullcontext()
    with chip:
        return traced.lower(lowering_platforms=(platform,)).as_text()


_CALL_RE = re.compile(r"custom_call @([\w$.]+)\((.*)$", re.M)
_NAME_RE = re.compile(r'\bkernel_name = "([^"]+)"|\bname = "([^"]+)"')


def kernel_calls(text: str) -> list[KernelCall]:
    """The Pallas kernels called in lowered StableHLO `text`, in order of appearance."""
    calls = []
    for m in _CALL_RE.finditer(text):
        target = _CALL_TARGETS.get(m.group(1))
        if target is None:
            continue
        rest = re.sub(r"\\22body\\22: \\22[^\\]*\\22", "", m.group(2))  # skip the TPU payload
        rest = re.sub(r'\bir = "[^"]*"', "", rest)  # and the Triton one
        name = _NAME_RE.search(rest)
        calls.append(KernelCall(target, next(g for g in name.groups() if g) if name else ""))
    return calls
