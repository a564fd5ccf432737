"""The one place where a kernel implementation is chosen.

A kernel folder describes its forms and calls `select`, which returns the function to run:

    fn = _dispatch.select(
        "ssd", implementation, interpret,
        xla={"cpu": sequential_form, "default": chunked_form},   # or one callable
        pallas=lambda target: kernel_form(target),                # target: "tpu" | "gpu"
        unsupported=lambda target: None or "why the kernel cannot take these arguments",
    )
    y = fn(*arrays)

The form is chosen by the platform the computation is *lowered for*
(`jax.lax.platform_dependent`), not by `jax.default_backend()`: one jitted function lowers with
the TPU kernels for `lowering_platforms=("tpu",)`, with the GPU kernels for `("cuda",)` and with
the XLA forms for CPU, in forward and backward (each form is its own `custom_vjp`; the
derivative of the platform switch is the derivative of the branch that is kept). Only the
platforms this process has are traced (tracing kernels never lowered costs time); to lower for
another one from here, trace inside `lowering_for("tpu")` (kernels._lowering.lower does).

  "xla"     the plain-JAX form of the platform (`xla` may name one per platform).
  "pallas"  the Pallas kernel of the platform (TPU form on TPU, GPU form on CUDA). Where none
            can run (CPU without `interpret=True`, or arguments the kernel does not take) it
            raises a ValueError: at once when called outside `jit`, else when lowered for that
            platform. With `interpret=True` the Pallas kernel runs in interpret mode on every
            platform (the TPU form unless `interpret_target` says otherwise): a test path.
  "auto"    Pallas on TPU and GPU, XLA on CPU; where the kernel cannot take the arguments, XLA
            (said once in the log for the platform this process runs on). With
            `interpret=True`, like "pallas" but falling back to XLA.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Mapping

import jax
from jax.extend import core as jex_core
from jax.interpreters import batching, mlir

try:  # public in jax 0.10; kept importable across versions
    from jax.core import ShapedArray, Tracer
except ImportError:  # pragma: no cover
    from jax._src.core import ShapedArray, Tracer

__all__ = [
    "IMPLEMENTATIONS",
    "TARGETS",
    "compiler_params",
    "lowering_for",
    "next_pow2",
    "platform",
    "select",
    "traced_platforms",
]

IMPLEMENTATIONS = ("auto", "xla", "pallas")
# Pallas kernel forms and the lowering platforms that build them.
TARGETS = {"tpu": ("tpu",), "gpu": ("cuda",)}
_log = logging.getLogger("kernels")


def platform() -> str:
    """'gpu', 'tpu' or 'cpu' for the default backend ('cuda'/'rocm' count as 'gpu')."""
    backend = jax.default_backend()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


@functools.cache
def _warn_once(message: str) -> None:
    _log.warning(message)


def select(
    kernel: str,
    implementation: str,
    interpret: bool,
    *,
    xla: Callable | Mapping[str, Callable],
    pallas: Callable[[str], Callable],
    unsupported: Callable[[str], str | None] = lambda target: None,
    interpret_target: str = "tpu",
) -> Callable:
    """The function that runs `kernel` with `implementation` (see the module docstring).

    Args:
      kernel: name used in messages.
      implementation: "auto" | "xla" | "pallas".
      interpret: run the Pallas kernel in interpret mode (any platform; for tests).
      xla: the XLA form, or a mapping from lowering platform ("cpu", "cuda", "tpu", ...,
        "default") to forms.
      pallas: `pallas(target)` builds the Pallas form for target "tpu" or "gpu"; in interpret
        mode it is called as `pallas(target, interpret=True)`.
      unsupported: `unsupported(target)` is None when that Pallas form takes these arguments,
        else the reason (a sentence naming the argument).
      interpret_target: the form interpret mode runs.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{kernel}: implementation={implementation!r} is not one of {IMPLEMENTATIONS}"
        )
    if not isinstance(interpret, bool):
        raise TypeError(f"{kernel}: interpret must be a bool, got {interpret!r}")
    if interpret_target not in TARGETS:
        raise ValueError(f"{kernel}: interpret_target must be one of {tuple(TARGETS)}")
    xla_forms, xla_default = _xla_forms(xla)
    xla_for = lambda name: xla_forms.get(name, xla_default)
    platforms = traced_platforms()
    if implementation == "xla":
        return _switch({name: xla_for(name) for name in platforms}, xla_default)
    if interpret:
        problem = unsupported(interpret_target)
        if problem is None:
            return pallas(interpret_target, interpret=True)
        if implementation == "pallas":
            raise ValueError(_cannot_run(kernel, problem))
        _warn_once(f"{kernel}: the Pallas kernel cannot run these arguments ({problem}); using XLA")
        return _switch({name: xla_for(name) for name in platforms}, xla_default)
    problems = {target: unsupported(target) for target in TARGETS}
    if implementation == "pallas":
        if all(problems.values()):
            raise ValueError(_cannot_run(kernel, "; ".join(sorted(set(problems.values())))))
        other = _unavailable(
            xla_default,
            f"{kernel}: implementation='pallas' needs a GPU or TPU; on other platforms pass "
            "interpret=True (slow, for tests) or use implementation='xla' or 'auto'. (To lower "
            "for an accelerator this process does not have, trace inside "
            "kernels._dispatch.lowering_for(platform); kernels._lowering.lower does.)",
        )

        def pallas_branch(name):
            target = _TARGET_OF.get(name)
            if target is None:
                return other
            if problems[target] is not None:
                return _unavailable(xla_default, _cannot_run(kernel, problems[target]))
            return pallas(target)

        return _switch({name: pallas_branch(name) for name in platforms}, other)
    here = platform()
    if here in TARGETS and problems[here] is not None:
        _warn_once(
            f"{kernel}: the {here} Pallas kernel cannot run these arguments "
            f"({problems[here]}); 'auto' uses XLA"
        )

    def auto_branch(name):
        target = _TARGET_OF.get(name)
        if target is None or problems[target] is not None:
            return xla_for(name)
        return pallas(target)

    return _switch({name: auto_branch(name) for name in platforms}, xla_default)


def _cannot_run(kernel, problem):
    return (
        f"{kernel}: implementation='pallas' cannot run these arguments: {problem}. "
        "Use implementation='xla' (or 'auto', which falls back)."
    )


def _xla_forms(xla):
    """(per-platform XLA forms without the default, the default form)."""
    if callable(xla):
        return {}, xla
    forms = dict(xla)
    if "default" not in forms:
        raise ValueError("xla forms need a 'default' entry")
    default = forms.pop("default")
    return forms, default


def _switch(branches: dict, default: Callable) -> Callable:
    """`lax.platform_dependent` over `branches` (lowering platform name -> function); the
    function itself where every traced platform takes the same one."""
    forms = list(dict.fromkeys(branches.values()))
    if len(forms) == 1:
        return forms[0]

    def run(*args):
        return jax.lax.platform_dependent(*args, default=default, **branches)

    return run


# ----------------------------------------------------------------------------- platforms
# Which platforms' forms are traced: those of the backends this process has (CPU always), and
# any requested with `lowering_for` — tracing the Pallas kernels of platforms a computation
# will never be lowered for would only cost time. A platform that is neither gets the form of
# the process's own platform(s).

_TARGET_OF = {name: target for target, names in TARGETS.items() for name in names}
_REQUESTED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "kernels_lowering_for", default=()
)


@functools.cache
def _host_platforms() -> tuple[str, ...]:
    names = ["cpu"]
    for name in ("cuda", "rocm", "tpu"):
        try:
            if jax.devices(name):
                names.append(name)
        except RuntimeError:  # no such backend in this process
            pass
    return tuple(names)


def traced_platforms() -> tuple[str, ...]:
    """Lowering platforms whose kernel forms `select` traces (see `lowering_for`)."""
    return tuple(dict.fromkeys(_host_platforms() + _REQUESTED.get()))


@contextlib.contextmanager
def lowering_for(*platforms: str):
    """Traces the forms of `platforms` ("tpu", "cuda", "rocm", "cpu") too, so that what is
    traced inside can be lowered for them (`.lower(lowering_platforms=...)`) from a host that
    lacks them. Trace a fresh function inside (jit caches what it traced before)."""
    known = ("cpu", "cuda", "rocm", "tpu")
    for name in platforms:
        if name not in known:
            raise ValueError(f"lowering_for: {name!r} is not one of {known}")
    token = _REQUESTED.set(tuple(dict.fromkeys(_REQUESTED.get() + platforms)))
    try:
        yield
    finally:
        _REQUESTED.reset(token)


# ----------------------------------------------------------------------------- unavailable
# A branch that cannot run on its platform: it has the outputs' shapes (so every branch of the
# platform switch agrees) and raises when lowered. Called outside jit (the switch is then
# resolved in Python), it raises at once.

_unavailable_p = jex_core.Primitive("kernel_unavailable")
_unavailable_p.multiple_results = True
_unavailable_p.def_abstract_eval(lambda *args, out_avals, message: out_avals)


def _unavailable_impl(*args, out_avals, message):
    raise ValueError(message)


_unavailable_p.def_impl(_unavailable_impl)


def _unavailable_lowering(ctx, *args, out_avals, message):
    raise ValueError(message)


mlir.register_lowering(_unavailable_p, _unavailable_lowering)


def _unavailable_batching(args, dims, *, out_avals, message):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not batching.not_mapped)
    avals = tuple(a.update(shape=(size, *a.shape)) for a in out_avals)
    return _unavailable_p.bind(*args, out_avals=avals, message=message), [0] * len(avals)


batching.primitive_batchers[_unavailable_p] = _unavailable_batching


def _bind_unavailable(message, args, like):
    leaves, tree = jax.tree.flatten(like)
    avals = tuple(ShapedArray(a.shape, a.dtype) for a in leaves)
    return jax.tree.unflatten(tree, _unavailable_p.bind(*args, out_avals=avals, message=message))


def _unavailable(xla_fn: Callable, message: str) -> Callable:
    @jax.custom_vjp
    def branch(*args):
        return _bind_unavailable(message, jax.tree.leaves(args), jax.eval_shape(xla_fn, *args))

    def fwd(*args):
        return branch(*args), args

    def bwd(args, g):
        return _bind_unavailable(message, jax.tree.leaves(g), args)

    branch.defvjp(fwd, bwd)

    def run(*args):
        if not any(isinstance(a, Tracer) for a in jax.tree.leaves(args)):
            raise ValueError(message)  # outside jit: the platform is known now
        return branch(*args)

    return run


# ----------------------------------------------------------------------------- helpers


def compiler_params(
    target: str, dimension_semantics: tuple[str, ...], *, num_warps: int = 4, num_stages: int = 2
):
    """Compiler parameters for `pl.pallas_call` on `target`.

    GPU kernels use the Triton lowering (they are written for its programming model:
    whole-block values, `fori_loop` inside the program); `dimension_semantics` is TPU-only.
    """
    if target == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=dimension_semantics)
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
