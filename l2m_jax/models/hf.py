"""Hugging Face checkpoints (a local folder: config.json + safetensors) as our configs and params.

    checkpoint = read_checkpoint(folder)        # family, our config, the weights (lazy)
    params = checkpoint.place(mesh=None)        # straight from the files onto the devices

Families (config.json's `model_type`; the architecture each one is written by):

  llama    LlamaForCausalLM    Llama 2, 3, 3.1/3.2 (rope_scaling "llama3" or "linear"),
                               optional attention/MLP biases, explicit head_dim
  mistral  MistralForCausalLM  Llama layout; a sliding window caps max_len at the window
  qwen2    Qwen2ForCausalLM    Qwen2/2.5: q, k, v biases, tied or untied embeddings
  qwen3    Qwen3ForCausalLM    Qwen3: RMSNorm of each query/key head, head_dim apart from D/H
  gpt2     GPT2LMHeadModel     learned positions, fused c_attn (Conv1D, [in, out] weights)
  gpt_neox GPTNeoXForCausalLM  GPT-NeoX/Pythia: fused per-head q|k|v, partial rotary,
                               parallel residual
  mamba    MambaForCausalLM    Mamba-1
  mamba2   Mamba2ForCausalLM   Mamba-2 (SSD), untied output by default

Each family has one explicit table from our parameter paths to the file's tensor names (the
`_*_TABLE` functions below), with the file shape that config.json implies and how the tensor
is laid out for us (transposed, conv kernel squeezed, fused q|k|v rows gathered). Tensors are
read from memory-mapped safetensors (`hf_safetensors`), never with torch; each device's shard
of each parameter is read on its own (`jax.make_array_from_callback`), so a model sharded over
a mesh is never held whole on the host. Matrices keep the file's dtype unless a dtype is
asked for; vectors (norm scales, biases, SSM parameters, conv kernels) are float32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from l2m_jax.models.hf_safetensors import SafetensorsCheckpoint
from l2m_jax.models.ssm import Mamba2Config, MambaConfig
from l2m_jax.models.transformer import RopeScaling, TransformerConfig

__all__ = [
    "ARCHITECTURES",
    "HFCheckpoint",
    "document_start",
    "is_hf_folder",
    "read_checkpoint",
    "read_json",
]

CONFIG_FILE = "config.json"
# Tensors some checkpoints carry that are not weights (masks and rotary tables rebuilt at load).
_BUFFERS = ("attn.bias", "attn.masked_bias", "attention.bias", "attention.masked_bias", "inv_freq")
# Leaves kept in the file's (or the asked) dtype; every other leaf is float32.
MATRICES = frozenset(
    {"tokens", "unembed", "wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "w_in", "w_out"}
    | {"in_proj", "x_proj", "dt_proj", "out_proj"}
)


def read_json(path: pathlib.Path) -> dict:
    try:
        value = json.loads(path.read_text(), parse_constant=float)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def is_hf_folder(path: str | os.PathLike) -> bool:
    return pathlib.Path(path).expanduser().is_dir()


# ----------------------------------------------------------------------------- configs


class _Fields:
    """config.json's values with the model class's defaults; errors name the file."""

    def __init__(self, path: pathlib.Path, raw: dict, defaults: dict):
        self.path, self.raw, self.defaults = path, raw, defaults

    def __call__(self, key: str, *fallbacks: str):
        for k in (key, *fallbacks):
            value = self.raw.get(k)
            if value is not None:
                return value
        if key in self.defaults:
            return self.defaults[key]
        raise ValueError(f"{self.path} lacks {key!r}; the config is incomplete")

    def get(self, key: str, default=None):
        value = self.raw.get(key)
        return default if value is None else value

    def unsupported(self, what: str, supported: str = "") -> ValueError:
        extra = f" (supported: {supported})" if supported else ""
        return ValueError(f"{self.path}: {what} is not supported{extra}")


def _float(value) -> float:
    if isinstance(value, dict) and "__float__" in value:  # transformers 5 writes inf this way
        return float(value["__float__"])
    return float(value)


def _rope(f: _Fields) -> tuple[float, RopeScaling | None, float]:
    """(theta, scaling, partial rotary factor) from rope_parameters (transformers 5) or
    rope_theta + rope_scaling (transformers 4), or GPT-NeoX's rotary_emb_base/rotary_pct."""
    params = {**(f.get("rope_scaling") or {}), **(f.get("rope_parameters") or {})}
    if any(isinstance(v, dict) for v in params.values()):
        raise f.unsupported(f"rope parameters per layer type ({sorted(params)})")
    theta = float(params.get("rope_theta") or f("rope_theta", "rotary_emb_base"))
    partial = float(
        params.get("partial_rotary_factor")
        or f.get("partial_rotary_factor")
        or f.get("rotary_pct")
        or f.defaults.get("partial_rotary_factor", 1.0)
    )
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return theta, None, partial
    if kind == "linear":
        return theta, RopeScaling("linear", factor=float(params["factor"])), partial
    if kind == "llama3":
        scaling = RopeScaling(
            "llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_positions=int(
                params.get("original_max_position_embeddings") or f("max_position_embeddings")
            ),
        )
        return theta, scaling, partial
    raise f.unsupported(f"rope type {kind!r}", "default, linear, llama3")


_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def _activation(f: _Fields, key: str) -> str:
    name = f(key)
    if name not in _ACTIVATIONS:
        raise f.unsupported(f"{key}={name!r}", ", ".join(sorted(_ACTIVATIONS)))
    return _ACTIVATIONS[name]


def _llama_like(f: _Fields, model_type: str) -> TransformerConfig:
    theta, scaling, partial = _rope(f)
    H = int(f("num_attention_heads"))
    D = int(f("hidden_size"))
    E = int(f.get("head_dim") or D // H)
    if partial != 1.0:
        raise f.unsupported(f"partial_rotary_factor={partial} for {model_type}")
    bias = bool(f("attention_bias")) if model_type != "qwen2" else True
    return TransformerConfig(
        style="llama",
        vocab_size=int(f("vocab_size")),
        d_model=D,
        n_layers=int(f("num_hidden_layers")),
        n_heads=H,
        n_kv_heads=int(f.get("num_key_value_heads") or H),
        d_head=E,
        d_ff=int(f("intermediate_size")),
        max_positions=0,
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(f("rms_norm_eps")),
        activation=_activation(f, "hidden_act"),
        attn_bias=bias,
        attn_out_bias=bias if model_type != "qwen2" else False,
        mlp_bias=bool(f("mlp_bias")),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(f("tie_word_embeddings")),
    )


def _gpt2(f: _Fields, model_type: str) -> TransformerConfig:
    if not f("scale_attn_weights") or f("scale_attn_by_inverse_layer_idx"):
        raise f.unsupported("attention scaling other than 1/sqrt(head_dim)")
    D = int(f("n_embd", "hidden_size"))
    return TransformerConfig(
        style="gpt2",
        vocab_size=int(f("vocab_size")),
        d_model=D,
        n_layers=int(f("n_layer", "num_hidden_layers")),
        n_heads=int(f("n_head", "num_attention_heads")),
        d_ff=int(f.get("n_inner") or 4 * D),
        max_positions=int(f("n_positions", "max_position_embeddings")),
        norm_eps=float(f("layer_norm_epsilon")),
        activation=_activation(f, "activation_function"),
        tie_embeddings=bool(f("tie_word_embeddings")),
    )


def _neox(f: _Fields, model_type: str) -> TransformerConfig:
    theta, scaling, partial = _rope(f)
    D, H = int(f("hidden_size")), int(f("num_attention_heads"))
    bias = bool(f("attention_bias"))
    return TransformerConfig(
        style="neox",
        vocab_size=int(f("vocab_size")),
        d_model=D,
        n_layers=int(f("num_hidden_layers")),
        n_heads=H,
        d_ff=int(f("intermediate_size")),
        max_positions=0,
        rope_theta=theta,
        rotary_dim=int(D // H * partial),
        rope_scaling=scaling,
        norm_eps=float(f("layer_norm_eps")),
        activation=_activation(f, "hidden_act"),
        attn_bias=bias,
        attn_out_bias=bias,
        mlp_bias=True,
        parallel_residual=bool(f("use_parallel_residual")),
        tie_embeddings=bool(f("tie_word_embeddings")),
    )


def _mamba_common(f: _Fields) -> dict:
    if f("use_bias"):
        raise f.unsupported("use_bias=true (biases on in_proj/out_proj)")
    if _activation(f, "hidden_act") != "silu":
        raise f.unsupported(f"hidden_act={f('hidden_act')!r} for Mamba", "silu")
    D = int(f("hidden_size"))
    expand = float(f("expand"))
    inner = int(f.get("intermediate_size") or int(expand * D))
    if inner % D:
        raise f.unsupported(f"an inner width {inner} that is not a multiple of hidden_size {D}")
    return dict(
        vocab_size=int(f("vocab_size")),
        d_model=D,
        n_layers=int(f("num_hidden_layers")),
        d_state=int(f("state_size")),
        d_conv=int(f("conv_kernel")),
        expand=inner // D,
        norm_eps=float(f("layer_norm_epsilon")),
        tie_embeddings=bool(f("tie_word_embeddings")),
    )


def _mamba(f: _Fields, model_type: str) -> MambaConfig:
    fields = _mamba_common(f)
    rank = f("time_step_rank")
    fields["dt_rank"] = math.ceil(fields["d_model"] / 16) if rank == "auto" else int(rank)
    return MambaConfig(**fields)


def _mamba2(f: _Fields, model_type: str) -> Mamba2Config:
    fields = _mamba_common(f)
    limit = tuple(_float(v) for v in f("time_step_limit"))
    if limit != (0.0, math.inf):
        raise f.unsupported(f"time_step_limit={list(limit)}", "[0, inf]")
    if f.get("rms_norm", True) is False:
        raise f.unsupported("rms_norm=false (Mamba-2 without the gated norm)")
    head_dim, heads = int(f("head_dim")), int(f("num_heads"))
    inner = fields["expand"] * fields["d_model"]
    if heads * head_dim != inner:
        raise ValueError(
            f"{f.path}: num_heads·head_dim = {heads}·{head_dim} differs from the inner width "
            f"expand·hidden_size = {inner}"
        )
    return Mamba2Config(**fields, head_dim=head_dim, n_groups=int(f("n_groups")))


# ----------------------------------------------------------------------------- name tables


class _Spec(NamedTuple):
    """How one of our leaves (one layer of it, for layers/...) is read from the file.

    name: the tensor's name ("{i}" is the layer). shape: its shape as config.json implies.
    perm: our axis k is the file's axis perm[k] (after dropping `squeeze`). take: (file
    axis, positions) gathers that axis (fused q|k|v projections).
    """

    name: str
    shape: tuple[int, ...]
    perm: tuple[int, ...] | None = None
    squeeze: int | None = None
    take: tuple[int, np.ndarray] | None = None


_T = (1, 0)  # torch Linear weights are [out, in]; ours are [in, out]


def _llama_table(c: TransformerConfig, prefix: str) -> dict[str, _Spec]:
    """LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM."""
    D, E, H, K, F, V = c.d_model, c.head_dim, c.n_heads, c.kv_heads, c.ff_dim, c.vocab_size
    L = "model.layers.{i}."
    return {
        "embed/tokens": _Spec("model.embed_tokens.weight", (V, D)),
        "layers/attn_norm/scale": _Spec(L + "input_layernorm.weight", (D,)),
        "layers/attn/wq": _Spec(L + "self_attn.q_proj.weight", (H * E, D), _T),
        "layers/attn/wk": _Spec(L + "self_attn.k_proj.weight", (K * E, D), _T),
        "layers/attn/wv": _Spec(L + "self_attn.v_proj.weight", (K * E, D), _T),
        "layers/attn/wo": _Spec(L + "self_attn.o_proj.weight", (D, H * E), _T),
        "layers/attn/bq": _Spec(L + "self_attn.q_proj.bias", (H * E,)),
        "layers/attn/bk": _Spec(L + "self_attn.k_proj.bias", (K * E,)),
        "layers/attn/bv": _Spec(L + "self_attn.v_proj.bias", (K * E,)),
        "layers/attn/bo": _Spec(L + "self_attn.o_proj.bias", (D,)),
        "layers/attn/q_norm": _Spec(L + "self_attn.q_norm.weight", (E,)),
        "layers/attn/k_norm": _Spec(L + "self_attn.k_norm.weight", (E,)),
        "layers/mlp_norm/scale": _Spec(L + "post_attention_layernorm.weight", (D,)),
        "layers/mlp/w_gate": _Spec(L + "mlp.gate_proj.weight", (F, D), _T),
        "layers/mlp/w_up": _Spec(L + "mlp.up_proj.weight", (F, D), _T),
        "layers/mlp/w_down": _Spec(L + "mlp.down_proj.weight", (D, F), _T),
        "layers/mlp/b_gate": _Spec(L + "mlp.gate_proj.bias", (F,)),
        "layers/mlp/b_up": _Spec(L + "mlp.up_proj.bias", (F,)),
        "layers/mlp/b_down": _Spec(L + "mlp.down_proj.bias", (D,)),
        "final_norm/scale": _Spec("model.norm.weight", (D,)),
        "final_norm/bias": _Spec("model.norm.bias", (D,)),
        "head/unembed": _Spec("lm_head.weight", (V, D), _T),
    }


def _gpt2_table(c: TransformerConfig, prefix: str) -> dict[str, _Spec]:
    """GPT2LMHeadModel: Conv1D weights are already [in, out]; c_attn holds q | k | v."""
    D, F, V, P = c.d_model, c.ff_dim, c.vocab_size, c.num_positions
    L = prefix + "h.{i}."
    part = lambda j: (1, np.arange(j * D, (j + 1) * D))
    bias_part = lambda j: (0, np.arange(j * D, (j + 1) * D))
    return {
        "embed/tokens": _Spec(prefix + "wte.weight", (V, D)),
        "positions": _Spec(prefix + "wpe.weight", (P, D)),
        "layers/attn_norm/scale": _Spec(L + "ln_1.weight", (D,)),
        "layers/attn_norm/bias": _Spec(L + "ln_1.bias", (D,)),
        "layers/attn/wq": _Spec(L + "attn.c_attn.weight", (D, 3 * D), take=part(0)),
        "layers/attn/wk": _Spec(L + "attn.c_attn.weight", (D, 3 * D), take=part(1)),
        "layers/attn/wv": _Spec(L + "attn.c_attn.weight", (D, 3 * D), take=part(2)),
        "layers/attn/bq": _Spec(L + "attn.c_attn.bias", (3 * D,), take=bias_part(0)),
        "layers/attn/bk": _Spec(L + "attn.c_attn.bias", (3 * D,), take=bias_part(1)),
        "layers/attn/bv": _Spec(L + "attn.c_attn.bias", (3 * D,), take=bias_part(2)),
        "layers/attn/wo": _Spec(L + "attn.c_proj.weight", (D, D)),
        "layers/attn/bo": _Spec(L + "attn.c_proj.bias", (D,)),
        "layers/mlp_norm/scale": _Spec(L + "ln_2.weight", (D,)),
        "layers/mlp_norm/bias": _Spec(L + "ln_2.bias", (D,)),
        "layers/mlp/w_in": _Spec(L + "mlp.c_fc.weight", (D, F)),
        "layers/mlp/b_in": _Spec(L + "mlp.c_fc.bias", (F,)),
        "layers/mlp/w_out": _Spec(L + "mlp.c_proj.weight", (F, D)),
        "layers/mlp/b_out": _Spec(L + "mlp.c_proj.bias", (D,)),
        "final_norm/scale": _Spec(prefix + "ln_f.weight", (D,)),
        "final_norm/bias": _Spec(prefix + "ln_f.bias", (D,)),
        "head/unembed": _Spec("lm_head.weight", (V, D), _T),
    }


def _neox_table(c: TransformerConfig, prefix: str) -> dict[str, _Spec]:
    """GPTNeoXForCausalLM: query_key_value rows are per head [q (E) | k (E) | v (E)]."""
    D, E, H, F, V = c.d_model, c.head_dim, c.n_heads, c.ff_dim, c.vocab_size
    L = "gpt_neox.layers.{i}."
    rows = lambda j: (np.arange(H)[:, None] * 3 * E + j * E + np.arange(E)[None]).reshape(-1)
    qkv, qkv_b = L + "attention.query_key_value.weight", L + "attention.query_key_value.bias"
    return {
        "embed/tokens": _Spec("gpt_neox.embed_in.weight", (V, D)),
        "layers/attn_norm/scale": _Spec(L + "input_layernorm.weight", (D,)),
        "layers/attn_norm/bias": _Spec(L + "input_layernorm.bias", (D,)),
        "layers/attn/wq": _Spec(qkv, (3 * D, D), _T, take=(0, rows(0))),
        "layers/attn/wk": _Spec(qkv, (3 * D, D), _T, take=(0, rows(1))),
        "layers/attn/wv": _Spec(qkv, (3 * D, D), _T, take=(0, rows(2))),
        "layers/attn/bq": _Spec(qkv_b, (3 * D,), take=(0, rows(0))),
        "layers/attn/bk": _Spec(qkv_b, (3 * D,), take=(0, rows(1))),
        "layers/attn/bv": _Spec(qkv_b, (3 * D,), take=(0, rows(2))),
        "layers/attn/wo": _Spec(L + "attention.dense.weight", (D, D), _T),
        "layers/attn/bo": _Spec(L + "attention.dense.bias", (D,)),
        "layers/mlp_norm/scale": _Spec(L + "post_attention_layernorm.weight", (D,)),
        "layers/mlp_norm/bias": _Spec(L + "post_attention_layernorm.bias", (D,)),
        "layers/mlp/w_in": _Spec(L + "mlp.dense_h_to_4h.weight", (F, D), _T),
        "layers/mlp/b_in": _Spec(L + "mlp.dense_h_to_4h.bias", (F,)),
        "layers/mlp/w_out": _Spec(L + "mlp.dense_4h_to_h.weight", (D, F), _T),
        "layers/mlp/b_out": _Spec(L + "mlp.dense_4h_to_h.bias", (D,)),
        "final_norm/scale": _Spec("gpt_neox.final_layer_norm.weight", (D,)),
        "final_norm/bias": _Spec("gpt_neox.final_layer_norm.bias", (D,)),
        "head/unembed": _Spec(prefix + ".weight", (V, D), _T),  # embed_out or lm_head
    }


def _mamba_table(c: MambaConfig | Mamba2Config, prefix: str) -> dict[str, _Spec]:
    """MambaForCausalLM and Mamba2ForCausalLM (conv1d weights are [F, 1, W])."""
    D, Di, N, W, V, F = c.d_model, c.d_inner, c.d_state, c.d_conv, c.vocab_size, c.conv_dim
    L = "backbone.layers.{i}."
    table = {
        "embed/tokens": _Spec("backbone.embeddings.weight", (V, D)),
        "layers/norm/scale": _Spec(L + "norm.weight", (D,)),
        "layers/conv_w": _Spec(L + "mixer.conv1d.weight", (F, 1, W), _T, squeeze=1),
        "layers/conv_b": _Spec(L + "mixer.conv1d.bias", (F,)),
        "layers/out_proj": _Spec(L + "mixer.out_proj.weight", (D, Di), _T),
        "final_norm/scale": _Spec("backbone.norm_f.weight", (D,)),
        "head/unembed": _Spec("lm_head.weight", (V, D), _T),
    }
    if isinstance(c, MambaConfig):
        R = c.time_step_rank
        table.update(
            {
                "layers/in_proj": _Spec(L + "mixer.in_proj.weight", (2 * Di, D), _T),
                "layers/x_proj": _Spec(L + "mixer.x_proj.weight", (R + 2 * N, Di), _T),
                "layers/dt_proj": _Spec(L + "mixer.dt_proj.weight", (Di, R), _T),
                "layers/dt_bias": _Spec(L + "mixer.dt_proj.bias", (Di,)),
                "layers/A_log": _Spec(L + "mixer.A_log", (Di, N)),
                "layers/D": _Spec(L + "mixer.D", (Di,)),
            }
        )
    else:
        H, G = c.n_heads, c.n_groups
        table.update(
            {
                "layers/in_proj": _Spec(
                    L + "mixer.in_proj.weight", (2 * Di + 2 * G * N + H, D), _T
                ),
                "layers/dt_bias": _Spec(L + "mixer.dt_bias", (H,)),
                "layers/A_log": _Spec(L + "mixer.A_log", (H,)),
                "layers/D": _Spec(L + "mixer.D", (H,)),
                "layers/gate_norm": _Spec(L + "mixer.norm.weight", (Di,)),
            }
        )
    return table


class _Family(NamedTuple):
    architecture: str
    config: Callable[[_Fields, str], Any]
    table: Callable[[Any, str], dict[str, _Spec]]
    defaults: dict


_LLAMA_DEFAULTS = dict(
    rms_norm_eps=1e-6,
    hidden_act="silu",
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
    rope_theta=10_000.0,
)
_FAMILIES = {
    "llama": _Family("LlamaForCausalLM", _llama_like, _llama_table, _LLAMA_DEFAULTS),
    "mistral": _Family(
        "MistralForCausalLM",
        _llama_like,
        _llama_table,
        {**_LLAMA_DEFAULTS, "max_position_embeddings": 131072, "sliding_window": 4096},
    ),
    "qwen2": _Family(
        "Qwen2ForCausalLM",
        _llama_like,
        _llama_table,
        {**_LLAMA_DEFAULTS, "max_position_embeddings": 32768},
    ),
    "qwen3": _Family(
        "Qwen3ForCausalLM",
        _llama_like,
        _llama_table,
        {**_LLAMA_DEFAULTS, "max_position_embeddings": 32768},
    ),
    "gpt2": _Family(
        "GPT2LMHeadModel",
        _gpt2,
        _gpt2_table,
        dict(
            n_positions=1024,
            layer_norm_epsilon=1e-5,
            activation_function="gelu_new",
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            tie_word_embeddings=True,
        ),
    ),
    "gpt_neox": _Family(
        "GPTNeoXForCausalLM",
        _neox,
        _neox_table,
        dict(
            hidden_act="gelu",
            max_position_embeddings=2048,
            layer_norm_eps=1e-5,
            tie_word_embeddings=False,
            use_parallel_residual=True,
            attention_bias=True,
            rope_theta=10_000.0,
            partial_rotary_factor=0.25,
        ),
    ),
    "mamba": _Family(
        "MambaForCausalLM",
        _mamba,
        _mamba_table,
        dict(
            layer_norm_epsilon=1e-5,
            expand=2,
            conv_kernel=4,
            use_bias=False,
            use_conv_bias=True,
            hidden_act="silu",
            time_step_rank="auto",
            tie_word_embeddings=True,
            state_size=16,
        ),
    ),
    "mamba2": _Family(
        "Mamba2ForCausalLM",
        _mamba2,
        _mamba_table,
        dict(
            layer_norm_epsilon=1e-5,
            expand=2,
            conv_kernel=4,
            n_groups=8,
            use_bias=False,
            use_conv_bias=True,
            hidden_act="silu",
            time_step_limit=(0.0, math.inf),
            tie_word_embeddings=False,
            state_size=128,
            head_dim=64,
        ),
    ),
}
ARCHITECTURES = {family.architecture: model_type for model_type, family in _FAMILIES.items()}


# ----------------------------------------------------------------------------- reading


class _Leaf(NamedTuple):
    """One of our parameters: its shape and per-layer specs (one spec when not stacked)."""

    shape: tuple[int, ...]
    specs: tuple[_Spec, ...]
    stacked: bool
    zeros: bool = False  # absent from the file and zero by construction (conv bias off)


def _target_shape(spec: _Spec) -> tuple[int, ...]:
    shape = list(spec.shape)
    if spec.squeeze is not None:
        del shape[spec.squeeze]
    if spec.take is not None:  # the take axis counts the file's axes after the squeeze
        shape[spec.take[0]] = len(spec.take[1])
    perm = spec.perm or tuple(range(len(shape)))
    return tuple(shape[a] for a in perm)


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of increasing positions."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    return [(int(p[0]), int(p[-1]) + 1) for p in np.split(positions, breaks)]


def _read_spec(weights: SafetensorsCheckpoint, spec: _Spec, index: tuple) -> np.ndarray:
    """Our array (one layer) at `index` (a tuple of slices over our axes): only that part of
    the file's tensor is read."""
    ndim = len(spec.shape) - (spec.squeeze is not None)
    perm = spec.perm or tuple(range(ndim))
    src: list = [slice(None)] * ndim
    for k, s in enumerate(index):
        src[perm[k]] = s

    def get(sub):
        full = list(sub)
        if spec.squeeze is not None:
            full.insert(spec.squeeze, 0)
        return weights.read(spec.name, tuple(full))

    if spec.take is None:
        x = get(src)
    else:
        axis, positions = spec.take
        picked = positions[src[axis]]
        parts = []
        for start, stop in _runs(picked):
            sub = list(src)
            sub[axis] = slice(start, stop)
            parts.append(get(sub))
        x = np.concatenate(parts, axis=axis)
    return np.transpose(x, perm)


@dataclasses.dataclass(frozen=True, eq=False)
class HFCheckpoint:
    """A Hugging Face folder read as one of our models.

    Attributes:
      folder: the checkpoint folder.
      architecture: e.g. "LlamaForCausalLM"; model_type: config.json's model_type.
      config: our model config (TransformerConfig, MambaConfig or Mamba2Config).
      hf_config: config.json as a dict.
      context: the longest sequence the checkpoint scores as trained (positions, BOS
        included); context_source says where that figure comes from.
      weights: the safetensors files (read lazily).
      leaves: our param path ("layers/attn/wq") -> how it is read (the family's table rows).
    """

    folder: pathlib.Path
    architecture: str
    model_type: str
    config: Any
    hf_config: dict
    context: int
    context_source: str
    weights: SafetensorsCheckpoint
    leaves: dict

    def place(
        self,
        *,
        dtype: str | None = None,
        mesh: jax.sharding.Mesh | None = None,
        model_axis: str | None = "model",
    ) -> dict:
        """The params pytree on the devices, each shard read from the files on its own.

        dtype: of the matrices (embeddings, projections); None keeps the file's. Vectors are
        float32. mesh, model_axis: as `pretrained.shard_params` (None: the default device).
        """
        from jax.sharding import NamedSharding, SingleDeviceSharding

        from l2m_jax.models.pretrained import partition_spec

        if mesh is not None and model_axis is not None and model_axis not in mesh.axis_names:
            raise ValueError(
                f"model_axis {model_axis!r} is not an axis of the mesh "
                f"{tuple(mesh.axis_names)}; pass one of them or None"
            )
        out: dict = {}
        for path, leaf in self.leaves.items():
            key = path.split("/")[-1]
            if key in MATRICES:
                want = np.dtype(dtype) if dtype is not None else self._file_dtype(leaf)
            else:
                want = np.dtype(np.float32)
            if mesh is None:
                sharding = SingleDeviceSharding(jax.devices()[0])
            else:
                spec = partition_spec(path, leaf.shape, mesh, model_axis)
                sharding = NamedSharding(mesh, spec)

            def read(index, leaf=leaf, want=want):
                index = tuple(index) + (slice(None),) * (len(leaf.shape) - len(index))
                return self._read_leaf(leaf, index).astype(want, copy=False)

            array = jax.make_array_from_callback(leaf.shape, sharding, read)
            node = out
            *parents, last = path.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = array
        return out

    def _file_dtype(self, leaf: _Leaf) -> np.dtype:
        if leaf.zeros:
            return np.dtype(np.float32)
        dtype = self.weights.dtype(leaf.specs[0].name)
        # ml_dtypes' bfloat16 / float8 are not numpy floating types (their kind is "V")
        return dtype if np.issubdtype(dtype, np.floating) or dtype.kind == "V" else np.float32

    def _read_leaf(self, leaf: _Leaf, index: tuple) -> np.ndarray:
        if leaf.zeros:
            return np.zeros(
                tuple(len(range(*s.indices(n))) for s, n in zip(index, leaf.shape, strict=True)),
                np.float32,
            )
        if not leaf.stacked:
            return _read_spec(self.weights, leaf.specs[0], index)
        layers = range(len(leaf.specs))[index[0]]
        return np.stack([_read_spec(self.weights, leaf.specs[i], index[1:]) for i in layers])


def _family_of(path: pathlib.Path, raw: dict) -> tuple[str, str]:
    supported = ", ".join(f"{a} ({t})" for a, t in ARCHITECTURES.items())
    architectures = raw.get("architectures") or []
    model_type = raw.get("model_type")
    if model_type in _FAMILIES:
        arch = _FAMILIES[model_type].architecture
        if architectures and arch not in architectures:
            raise ValueError(
                f"{path}: architectures {architectures} are not supported (only the causal "
                f"language models: {supported})"
            )
        return model_type, arch
    shown = architectures[0] if architectures else model_type
    raise ValueError(
        f"{path}: architecture {shown!r} (model_type {model_type!r}) is not supported; "
        f"supported: {supported}"
    )


def _context(f: _Fields, model_type: str, config) -> tuple[int, str]:
    if isinstance(config, (MambaConfig, Mamba2Config)):
        return 1 << 20, "an SSM has no position limit (capped at 2^20)"
    if model_type == "gpt2":
        return config.num_positions, f"config.json n_positions = {config.num_positions}"
    n = int(f("max_position_embeddings"))
    window = f.get("sliding_window", f.defaults.get("sliding_window"))
    uses_window = model_type == "mistral" or bool(f.get("use_sliding_window", False))
    if window is not None and uses_window and int(window) < n:
        return int(window), (
            f"config.json sliding_window = {window} (full attention equals the window up to "
            f"there; max_position_embeddings = {n})"
        )
    return n, f"config.json max_position_embeddings = {n}"


def read_checkpoint(folder: str | os.PathLike, **overrides) -> HFCheckpoint:
    """Reads config.json and the safetensors headers of `folder`; checks every tensor.

    `overrides` replace fields of our config (e.g. bos_id). Raises ValueError naming the file
    for: no config.json, an unsupported architecture, missing shards or tensors, tensors the
    model does not use, and shapes that differ from what config.json implies.
    """
    folder = pathlib.Path(folder).expanduser().resolve()
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(
            f"{folder} has no {CONFIG_FILE}; a Hugging Face checkpoint folder holds "
            f"{CONFIG_FILE}, model.safetensors (or model.safetensors.index.json with its "
            "shards) and tokenizer.json"
        )
    raw = read_json(config_path)
    model_type, architecture = _family_of(config_path, raw)
    family = _FAMILIES[model_type]
    fields = _Fields(config_path, raw, family.defaults)
    try:
        config = family.config(fields, model_type)
    except (TypeError, ValueError) as err:
        if str(config_path) in str(err):
            raise
        raise ValueError(f"{config_path}: {err}") from err
    if overrides:
        config = dataclasses.replace(config, **overrides)
    context, context_source = _context(fields, model_type, config)
    weights = SafetensorsCheckpoint(folder)
    prefix = ""
    if model_type == "gpt2":
        prefix = "transformer." if "transformer.wte.weight" in weights else ""
    elif model_type == "gpt_neox":
        prefix = "embed_out" if "embed_out.weight" in weights else "lm_head"
    table = family.table(config, prefix)
    leaves = _leaves(config, table, weights, fields)
    return HFCheckpoint(
        folder, architecture, model_type, config, raw, context, context_source, weights, leaves
    )


def _leaves(config, table, weights: SafetensorsCheckpoint, fields: _Fields) -> dict[str, _Leaf]:
    """Our params' paths -> how to read them; checks names and shapes against the files."""
    from l2m_jax import models

    abstract = jax.eval_shape(lambda: models.init(config, jax.random.key(0)))
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)
    }
    n = config.n_layers
    leaves, used = {}, set()
    for path, shape in flat.items():
        spec = table.get(path)
        if spec is None:
            raise ValueError(f"no tensor of {fields.path.parent} maps onto our parameter {path}")
        stacked = path.startswith("layers/")
        names = [spec.name.format(i=i) for i in range(n)] if stacked else [spec.name]
        if path == "layers/conv_b" and not fields("use_conv_bias"):
            leaves[path] = _Leaf(tuple(shape), (), stacked, zeros=True)
            continue
        specs = []
        for name in names:
            if name not in weights:
                raise ValueError(
                    f"tensor {name} is missing from the checkpoint in {fields.path.parent} "
                    f"(our {path}; config.json implies shape {list(spec.shape)})"
                )
            got = tuple(weights.shape(name))
            if got != spec.shape:
                raise ValueError(
                    f"{weights.file_of(name)}: tensor {name} has shape {list(got)}, but "
                    f"{fields.path.name} implies {list(spec.shape)}; the weights and the config "
                    "are from different models"
                )
            specs.append(spec._replace(name=name))
            used.add(name)
        want = ((n,) if stacked else ()) + _target_shape(spec)
        assert want == tuple(shape), (path, want, shape)  # the table agrees with init()
        leaves[path] = _Leaf(tuple(shape), tuple(specs), stacked)
    tied = getattr(config, "tie_embeddings", False)
    extra = sorted(
        name
        for name in weights.names
        if name not in used
        and not name.endswith(_BUFFERS)
        and not (tied and name in ("lm_head.weight", "embed_out.weight"))
    )
    if extra:
        raise ValueError(
            f"{weights.file_of(extra[0])}: tensors {extra[:4]}"
            + (f" and {len(extra) - 4} more" if len(extra) > 4 else "")
            + f" are not used by a {fields('model_type')} model as {fields.path.name} describes "
            "it (an option this loader does not support?)"
        )
    return leaves


# ----------------------------------------------------------------------------- document start


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _template_start(processor: dict | None) -> str | None:
    """The special token a tokenizer.json post-processor puts before every text, if any."""
    if not processor:
        return None
    if processor.get("type") == "Sequence":
        for p in processor.get("processors", []):
            token = _template_start(p)
            if token is not None:
                return token
        return None
    if processor.get("type") == "TemplateProcessing":
        single = processor.get("single") or []
        if single and "SpecialToken" in single[0]:
            return single[0]["SpecialToken"]["id"]
    return None


def document_start(folder: str | os.PathLike, backend=None) -> tuple[int | None, str]:
    """(token id, where it comes from) that starts a document for this checkpoint.

    In order: the BOS the tokenizer adds itself (tokenizer_config.json add_bos_token, else
    tokenizer.json's post-processor); else the BOS that config.json, generation_config.json
    or tokenizer_config.json names; else the end-of-text token they name (eos), which
    separates documents in training. `backend` is the folder's `tokenizers.Tokenizer` (to name
    ids), if it has one.
    """
    folder = pathlib.Path(folder)
    files = {
        name: read_json(folder / name) if (folder / name).is_file() else {}
        for name in ("tokenizer_config.json", "config.json", "generation_config.json")
    }
    tok_config = files["tokenizer_config.json"]
    name = lambda i: (backend.id_to_token(i) if backend is not None else None) or "?"
    token_id = lambda text: backend.token_to_id(text) if backend is not None and text else None

    added, how = None, ""
    bos_text = _token_content(tok_config.get("bos_token"))
    if tok_config.get("add_bos_token") is True and token_id(bos_text) is not None:
        added, how = bos_text, "tokenizer_config.json add_bos_token with bos_token"
    elif tok_config.get("add_bos_token") is not False and (folder / "tokenizer.json").is_file():
        start = _template_start(read_json(folder / "tokenizer.json").get("post_processor"))
        if start is not None and token_id(start) is not None:
            added, how = start, "tokenizer.json's post-processor"
    if added is not None:
        i = token_id(added)
        return i, f"{how}: the tokenizer starts every text with {added} (id {i})"
    for role in ("bos", "eos"):
        what = (
            "the checkpoint's BOS"
            if role == "bos"
            else "no BOS in the checkpoint; the end-of-text token that separates training documents"
        )
        for file in ("config.json", "generation_config.json"):
            value = files[file].get(f"{role}_token_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None:
                return int(value), (
                    f"{file} {role}_token_id = {value} ({name(int(value))}): {what}; the "
                    "tokenizer adds none, so the model prepends it"
                )
        text = _token_content(tok_config.get(f"{role}_token"))
        if token_id(text) is not None:
            return token_id(text), (
                f"tokenizer_config.json {role}_token {text} (id {token_id(text)}): {what}; the "
                "tokenizer adds none, so the model prepends it"
            )
    return None, "the checkpoint names no BOS or end-of-text token"
