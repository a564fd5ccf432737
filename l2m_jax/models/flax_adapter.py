"""Models written in Flax as density estimators and as trained models.

The estimators and the trainer take pure functions over explicit param pytrees: the
estimators `logprob_fn(params, tokens_BxT)`, the trainer `apply_fn(params, inputs)` (a
`train.TokenTask` or `train.GaussianTask`) and the params. These adapters give both for a
Flax NNX module, or a Linen module with its variables:

    model = flax_adapter.from_nnx(module, bos_id=0)           # an nnx.Module
    model = flax_adapter.from_linen(module, variables, bos_id=0)   # a linen.Module

    bipartite_mi(model.logprob_fn, model.params, docs, splits)            # as the estimator
    task = train.TokenTask(apply_fn=model.apply_fn, batches=..., seq_len=..., eval_data=...)
    result = train.fit(task, model.params, config, out_dir=...)           # checkpoints too
    trained = model.merge(result.state.params)   # the NNX module (Linen: its variables)

`params` are the trainable parameters (NNX: the `nnx.Param` state; Linen: the "params"
collection). Everything else (NNX: RNG counters, batch statistics; Linen: other collections)
is held fixed at its current value inside `apply_fn`: put dropout and batch norm in their
deterministic/eval mode first (`module.eval()` in NNX). The module must map int32 tokens
[B, T] to logits [B, T, V] for `logprob_fn` (entry t of logprob_fn is log q(tokens[t] | bos_id,
tokens[:t]), from one pass over [bos_id, tokens[:-1]]); for a Gaussian task it returns the
(mean, std) pair the task expects, and `logprob_fn` is not used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["FlaxModel", "from_linen", "from_nnx"]


class FlaxModel(NamedTuple):
    """A Flax model as pure functions over its trainable params.

    Attributes:
      apply_fn: `apply_fn(params, inputs) -> outputs`, the module's call.
      params: the trainable parameters (a pytree of arrays).
      logprob_fn: the estimators' `logprob_fn(params, tokens_BxT) -> logp_BxT`.
      merge: `merge(params)` -> the NNX module with these params (Linen: the variables).
    """

    apply_fn: Callable[[Any, Any], Any]
    params: Any
    logprob_fn: Callable[[Any, Any], Any]
    merge: Callable[[Any], Any]


def _logprob_fn(apply_fn, bos_id: int):
    from l2m_jax.models import causal_logprob_fn

    if isinstance(bos_id, bool) or not isinstance(bos_id, int) or bos_id < 0:
        raise ValueError(f"bos_id must be a token id >= 0, got {bos_id!r}")
    return causal_logprob_fn(apply_fn, bos_id)


def from_nnx(module, *, bos_id: int = 0) -> FlaxModel:
    """Adapts a Flax NNX module (`module(inputs) -> outputs`)."""
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(
            f"from_nnx needs a flax.nnx.Module, got {type(module).__name__}; for a Linen "
            "module use from_linen(module, variables)"
        )
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply_fn(params, inputs):
        return nnx.merge(graphdef, params, rest)(inputs)

    return FlaxModel(
        apply_fn, params, _logprob_fn(apply_fn, bos_id), lambda p: nnx.merge(graphdef, p, rest)
    )


def from_linen(module, variables, *, bos_id: int = 0) -> FlaxModel:
    """Adapts a Flax Linen module and its variables (`module.init(...)`'s result)."""
    from flax import linen

    if not isinstance(module, linen.Module):
        raise TypeError(
            f"from_linen needs a flax.linen.Module, got {type(module).__name__}; for an NNX "
            "module use from_nnx(module)"
        )
    if not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError(
            "variables must be the dict module.init(...) returns, with a 'params' collection; "
            f"got {type(variables).__name__}"
            + (
                f" with collections {sorted(variables.keys())}"
                if hasattr(variables, "keys")
                else ""
            )
        )
    rest = {k: v for k, v in variables.items() if k != "params"}

    def apply_fn(params, inputs):
        return module.apply({"params": params, **rest}, inputs)

    return FlaxModel(
        apply_fn,
        variables["params"],
        _logprob_fn(apply_fn, bos_id),
        lambda p: {"params": p, **rest},
    )
