"""Models as pure functions over explicit param pytrees; every function dispatches on the config.

  params = init(config, key)
  out = apply(config, params, inputs)             # tokens [B, L] -> logits [B, L, V];
                                                  # vectors [B, L, C] -> GaussianPrediction
  x = hidden_states(config, params, inputs)       # the final hidden states [B, L, D]
  logp = token_logprobs(config, params, inputs, targets)   # [B, L], no [B, L, V] array
  cache = init_cache(config, batch, max_len)
  out, cache = prefill(config, params, inputs, cache)
  out, cache = decode_step(config, params, input_B, cache)   # [B] tokens or [B, C] vectors

Configs: `TransformerConfig` (GPT-2, Llama and GPT-NeoX styles), `MambaConfig` (Mamba-1),
`Mamba2Config` (Mamba-2 / SSD). Named sizes: `preset(name, **overrides)`, `PRESETS`.
Pretrained models: `pretrained.load` (GGUF files, Hugging Face folders through `hf`); models
written in Flax: `flax_adapter.from_nnx` / `from_linen`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from l2m_jax.models import flax_adapter, gguf, heads, hf, pretrained
from l2m_jax.models import ssm as _ssm
from l2m_jax.models import transformer as _transformer
from l2m_jax.models.gguf import load_llama_gguf
from l2m_jax.models.heads import STD_FLOOR, GaussianPrediction
from l2m_jax.models.presets import NOMINAL_PARAMS, PRESETS, preset
from l2m_jax.models.pretrained import PretrainedModel
from l2m_jax.models.ssm import Mamba2Config, MambaConfig, SSMCache
from l2m_jax.models.state import StateSize, history_state_size
from l2m_jax.models.transformer import KVCache, RopeScaling, TransformerConfig

__all__ = [
    "NOMINAL_PARAMS",
    "PRESETS",
    "STD_FLOOR",
    "GaussianPrediction",
    "KVCache",
    "Mamba2Config",
    "MambaConfig",
    "PretrainedModel",
    "RopeScaling",
    "SSMCache",
    "StateSize",
    "TransformerConfig",
    "apply",
    "causal_logprob_fn",
    "decode_step",
    "flax_adapter",
    "gguf",
    "hf",
    "hidden_states",
    "history_state_size",
    "init",
    "init_cache",
    "load_llama_gguf",
    "param_count",
    "prefill",
    "preset",
    "pretrained",
    "token_logprob_fn",
    "token_logprobs",
]

_MODULES = {TransformerConfig: _transformer, MambaConfig: _ssm, Mamba2Config: _ssm}


def _module(config):
    module = _MODULES.get(type(config))
    if module is None:
        names = ", ".join(c.__name__ for c in _MODULES)
        raise TypeError(f"config must be one of {names}, got {type(config).__name__}")
    return module


def init(config, key) -> dict:
    """Random parameters (nested dicts of float32 arrays) for `config`."""
    return _module(config).init(config, key)


def apply(config, params, inputs):
    """Whole-sequence forward pass (training): output t depends on inputs 0..t only."""
    return _module(config).apply(config, params, inputs)


def hidden_states(config, params, inputs):
    """The final (normalised) hidden states [B, L, D] of a whole-sequence pass: `apply` is the
    head on them (`heads.output`)."""
    return _module(config).hidden_states(config, params, inputs)


def token_logprobs(config, params, inputs_BxL, targets_BxL, *, chunk_size=None):
    """log q(targets[b, t] | inputs[b, :t+1]) [B, L] float32 for a token model, with the
    unembedding and log-softmax fused over chunks of positions (forward and backward): no
    [B, L, V] logits. Equals log_softmax(apply(config, params, inputs))[targets]."""
    x_BxLxD = hidden_states(config, params, inputs_BxL)
    return heads.token_logprobs(config, params, x_BxLxD, targets_BxL, chunk_size=chunk_size)


def init_cache(config, batch: int, max_len: int):
    """An empty generation cache for `batch` sequences of up to `max_len` positions."""
    return _module(config).init_cache(config, batch, max_len)


def prefill(config, params, inputs, cache):
    """Feeds a block of positions through the cache: returns (outputs, cache)."""
    return _module(config).prefill(config, params, inputs, cache)


def decode_step(config, params, input_B, cache):
    """Feeds one position per sequence: returns (output, cache)."""
    return _module(config).decode_step(config, params, input_B, cache)


def param_count(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(a.size) for a in jax.tree.leaves(params))


def token_logprob_fn(config):
    """`logprob_fn(params, tokens_BxT int32) -> logp_BxT float32` for the estimators.

    Entry t is log q(tokens[t] | BOS, tokens[:t]): the model prepends `config.bos_id` and
    scores all T tokens in one forward pass of length T, through `token_logprobs` (memory
    O(T), never the [B, T, V] logits).
    """
    if config.head != "tokens":
        raise ValueError(
            f"token_logprob_fn needs a token model (head='tokens'), got head={config.head!r}"
        )
    _module(config)

    def logprob_fn(params, tokens_BxT):
        if tokens_BxT.ndim != 2:
            raise ValueError(f"tokens_BxT must be [B, T], got shape {tuple(tokens_BxT.shape)}")
        tokens_BxT = tokens_BxT.astype(jnp.int32)
        bos_Bx1 = jnp.full((tokens_BxT.shape[0], 1), config.bos_id, jnp.int32)
        inputs_BxT = jnp.concatenate([bos_Bx1, tokens_BxT[:, :-1]], axis=1)
        return token_logprobs(config, params, inputs_BxT, tokens_BxT)

    return logprob_fn


def causal_logprob_fn(apply_fn, bos_id: int):
    """The estimators' `logprob_fn(params, tokens_BxT)` for a causal LM written elsewhere
    (`apply_fn(params, inputs_BxT int32) -> logits_BxTxV`, e.g. a Flax module through
    `flax_adapter`): entry t is log q(tokens[t] | bos_id, tokens[:t]), from one pass over
    [bos_id, tokens[:-1]]. Our own models use `token_logprob_fn(config)`."""

    def logprob_fn(params, tokens_BxT):
        if tokens_BxT.ndim != 2:
            raise ValueError(f"tokens_BxT must be [B, T], got shape {tuple(tokens_BxT.shape)}")
        tokens_BxT = tokens_BxT.astype(jnp.int32)
        bos_Bx1 = jnp.full((tokens_BxT.shape[0], 1), bos_id, jnp.int32)
        inputs_BxT = jnp.concatenate([bos_Bx1, tokens_BxT[:, :-1]], axis=1)
        logits_BxTxV = apply_fn(params, inputs_BxT).astype(jnp.float32)
        picked_BxT = jnp.take_along_axis(logits_BxTxV, tokens_BxT[..., None], axis=-1)[..., 0]
        return picked_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)

    return logprob_fn
