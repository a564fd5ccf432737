"""Decoder-only transformer, GPT-2, Llama or GPT-NeoX style, as pure functions over a param
pytree.

Parameters (nested dicts of arrays, float32 unless loaded otherwise; `n` = n_layers, layers
stacked on axis 0 so one `lax.scan` runs them; H query heads, K key/value heads, E head_dim,
F d_ff):

  embed/tokens [V, D]             (head="tokens"; Gaussian MLP otherwise, see heads.py)
  positions [P, D]                learned absolute positions when num_positions P > 0
  layers/attn_norm/scale [n, D]   (+ /bias [n, D] with LayerNorm: gpt2, neox; llama: RMSNorm)
  layers/attn/wq [n, D, H·E]  wk, wv [n, D, K·E]  wo [n, H·E, D]
              bq [n, H·E]  bk, bv [n, K·E]   when attn_bias (gpt2, neox; Qwen2, Llama options)
              bo [n, D]                      when attn_out_bias
              q_norm [n, E]  k_norm [n, E]   when qk_norm (Qwen3: RMSNorm of each head)
  layers/mlp_norm/scale [n, D]    (+ /bias with LayerNorm)
  layers/mlp/w_in [n, D, F] w_out [n, F, D] (+ b_in [n, F], b_out [n, D])     gpt2, neox
  layers/mlp/w_gate, w_up [n, D, F] w_down [n, F, D] (+ b_gate, b_up, b_down) llama (gated)
  final_norm/scale [D]            (+ /bias with LayerNorm)
  head/...                        untied unembedding [D, V] or the Gaussian head

Projections are `x @ w` (w is [in, out]). Query/key heads are laid out head-major: columns
h·E .. h·E + E − 1 of wq belong to head h.

Rotary embeddings (llama, neox): the half-split convention of Hugging Face Llama and GPT-NeoX —
among the first R = rotary_dim dimensions of a head, dimension i is rotated together with
dimension i + R/2 by the angle position · f_i, f_i = rope_theta^(−2i/R) (optionally rescaled,
`RopeScaling`); dimensions R .. E − 1 pass unrotated (GPT-NeoX's partial rotary). Meta and
GGUF checkpoints store Q/K with adjacent pairs (2i, 2i+1): permute the rows of each head's
block when importing (new[:, h·E + i] = old[:, h·E + 2i], new[:, h·E + E/2 + i] = old[:, h·E +
2i + 1]).

Blocks are pre-norm: x + attn(norm1(x)), then + mlp(norm2(·)); with parallel_residual
(GPT-NeoX) both branches read the same x: x + attn(norm1(x)) + mlp(norm2(x)).

Attention: whole sequences go through `kernels.attention.causal_attention` (O(L) memory in
the forward and backward pass: blockwise on CPU, splash on TPU, cuDNN on GPU — chosen by the
lowering platform), prefill through `kernels.attention.prefill_attention` (the new block
against the cache rows, O(L + S)). Generation uses a preallocated `KVCache` (per layer
[B, K, S, E] keys and values in config.dtype, per-sequence int32 lengths; donate it to the
jitted step); decoding one token writes through `kernels.decode_attention.append_kv` and
attends with `kernels.decode_attention.decode_attention`. `implementation="reference"` runs
the quadratic reference attention instead (the form before O(L) attention; for checks).

`hidden_states` gives the final (normalised) hidden states; `apply` is the head on them, and
`heads.token_logprobs` the fused token head that never builds the [B, L, V] logits.

Past the cache capacity S (or the learned positions P): Python-level checks raise ValueError
whenever lengths are static or concrete (eager calls, shapes under jit). Under jit with traced
lengths, the outputs of a sequence that runs past S or P are NaN (never a silent clip), and the
rows that do not fit are dropped: a prefill never overwrites the valid rows of the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels.attention import causal_attention, prefill_attention
from kernels.decode_attention import append_kv, decode_attention
from l2m_jax.models import _layers, heads

__all__ = ["KVCache", "RopeScaling", "TransformerConfig", "rope_frequencies"]

STYLES = ("gpt2", "llama", "neox")
ACTIVATIONS = ("gelu_tanh", "gelu", "silu", "relu")
ROPE_SCALINGS = ("linear", "llama3", "divisors")
# The kernel implementations, plus the quadratic reference attention (for checks).
IMPLEMENTATIONS = (*_layers.IMPLEMENTATIONS, "reference")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rescaled rotary frequencies (context extension), as in Hugging Face's rope_parameters.

    Attributes:
      kind: "linear" (every frequency divided by `factor`: positions interpolated),
        "llama3" (Llama 3.1: wavelengths longer than original_max_positions / low_freq_factor
        divided by `factor`, shorter than original_max_positions / high_freq_factor kept,
        smoothly interpolated between), or "divisors" (frequency i divided by divisors[i],
        the per-frequency factors GGUF files store as `rope_freqs`).
      factor, low_freq_factor, high_freq_factor, original_max_positions: as named ("linear"
        uses factor only; "llama3" all four; Llama 3.1 has 8, 1, 4, 8192).
      divisors: R / 2 positive values ("divisors" only).
    """

    kind: str
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192
    divisors: tuple[float, ...] = ()

    def __post_init__(self):
        if self.kind not in ROPE_SCALINGS:
            raise ValueError(f"RopeScaling.kind must be one of {ROPE_SCALINGS}, got {self.kind!r}")
        if self.kind in ("linear", "llama3") and not self.factor > 0:
            raise ValueError(f"RopeScaling.factor must be positive, got {self.factor!r}")
        if self.kind == "llama3":
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ValueError(
                    "RopeScaling (llama3) needs 0 < low_freq_factor < high_freq_factor, got "
                    f"{self.low_freq_factor!r} and {self.high_freq_factor!r}"
                )
            _layers.check_positive(
                "RopeScaling.original_max_positions", self.original_max_positions
            )
        if self.kind == "divisors":
            if not self.divisors or not all(d > 0 for d in self.divisors):
                raise ValueError("RopeScaling (divisors) needs a tuple of positive divisors")
        elif self.divisors:
            raise ValueError(
                f"RopeScaling.divisors are only used by kind='divisors', not {self.kind!r}"
            )


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A decoder-only transformer.

    Attributes:
      style: "gpt2" (LayerNorm, GELU MLP, biases, learned positions), "llama" (RMSNorm,
        gated SiLU MLP, no biases, rotary positions, grouped-query attention) or "neox"
        (GPT-NeoX / Pythia: LayerNorm, GELU MLP, biases, rotary positions on the first
        rotary_dim dimensions of each head, parallel residual). The fields below marked
        "style default" refine a style (None keeps the style's choice).
      vocab_size: V, tokens (head="tokens"); ignored by the Gaussian head but kept valid.
      d_model: D, residual width.  n_layers: blocks.  n_heads: H query heads.
      n_kv_heads: K key/value heads (divide H); None means K = H.
      d_head: E, width of each head; None means D / H (H must then divide D). Qwen3 and
        some Mistral models set it apart from D / H.
      d_ff: MLP hidden width; None means 4·D (gpt2, neox) or 8/3·D rounded up to 64 (llama).
      max_positions: learned absolute positions P; None means 1024 for gpt2, 0 (none) for
        llama and neox. Sequences (and caches) cannot be longer than P when P > 0.
      rope_theta: rotary base (1e4 Llama-2, 1e5 SmolLM2, 5e5 Llama-3, 1e6 Qwen2).
      rotary_dim: R, rotated dimensions of each head (even, <= E); None means E (llama,
        neox). Pythia rotates a quarter of each head. Not used by gpt2.
      rope_scaling: a `RopeScaling` (Llama-3.1 "llama3", "linear", GGUF divisors) or None.
      norm_eps: epsilon of LayerNorm / RMSNorm (also of the q/k norms).
      activation: the MLP nonlinearity, one of ACTIVATIONS: "gelu_tanh" (GPT-2's tanh
        approximation), "gelu" (exact, erf), "silu", "relu"; style default gelu_tanh (gpt2),
        gelu (neox), silu (llama: the gate of the gated MLP).
      attn_bias: biases on the q, k, v projections (style default: gpt2/neox yes, llama no).
      attn_out_bias: a bias on the attention output projection (same defaults).
      mlp_bias: biases on the MLP projections (same defaults).
      qk_norm: RMSNorm (learned scale over E) of every query and key head before the
        rotary embedding (Qwen3).
      parallel_residual: both branches of a block read the block's input (style default:
        neox yes, others no).
      tie_embeddings: unembed with the transposed token embedding.
      head: "tokens" (logits) or "gaussian" (GaussianPrediction of `channels` values).
      channels: C, vector size for head="gaussian".
      bos_id: token prepended by `token_logprob_fn`.
      implementation: "auto" | "xla" | "pallas" for the attention kernels (whole-sequence,
        prefill and decode dispatchers), or "reference": the quadratic reference attention
        (full L×L scores) and the XLA decode form. interpret: run Pallas kernels in interpret
        mode (CPU tests).
      remat: recompute each layer's activations in the backward pass of `apply`
        (`jax.checkpoint` per layer): memory O(layers) instead of O(layers x activations).
      dtype: "float32" or "bfloat16": activations, matmul operands, attention and the KV cache
        in this type (the same in apply, prefill and decode), with float32 accumulation,
        norm and softmax statistics. Parameters keep whatever dtype they have (float32, or a
        bfloat16 checkpoint's matrices).
    """

    style: str = "gpt2"
    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_ff: int | None = None
    max_positions: int | None = None
    rope_theta: float = 10_000.0
    rotary_dim: int | None = None
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-5
    activation: str | None = None
    attn_bias: bool | None = None
    attn_out_bias: bool | None = None
    mlp_bias: bool | None = None
    qk_norm: bool = False
    parallel_residual: bool | None = None
    tie_embeddings: bool = True
    head: str = "tokens"
    channels: int = 1
    bos_id: int = 0
    implementation: str = "auto"
    interpret: bool = False
    remat: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"TransformerConfig.style must be one of {STYLES}, got {self.style!r}")
        _layers.check_common(self, IMPLEMENTATIONS)
        _layers.check_positive("TransformerConfig.n_heads", self.n_heads)
        if self.d_head is not None:
            _layers.check_positive("TransformerConfig.d_head", self.d_head)
        elif self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerConfig: n_heads={self.n_heads} does not divide d_model="
                f"{self.d_model}; choose n_heads among the divisors of d_model or set d_head"
            )
        if self.n_kv_heads is not None:
            _layers.check_positive("TransformerConfig.n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(
                    f"TransformerConfig: n_kv_heads={self.n_kv_heads} does not divide n_heads="
                    f"{self.n_heads} (grouped-query attention shares each KV head among "
                    "n_heads // n_kv_heads query heads)"
                )
        if self.d_ff is not None:
            _layers.check_positive("TransformerConfig.d_ff", self.d_ff)
        if self.style == "gpt2" and (self.rotary_dim or self.rope_scaling is not None):
            raise ValueError(
                "TransformerConfig: style='gpt2' uses learned positions; rotary_dim and "
                "rope_scaling need style='llama' or 'neox'"
            )
        if self.rotary_dim is not None:
            _layers.check_positive("TransformerConfig.rotary_dim", self.rotary_dim)
        if self.rotary and (self.rotary_size % 2 or self.rotary_size > self.head_dim):
            raise ValueError(
                f"TransformerConfig: rotary embeddings need an even rotary_dim <= head_dim, got "
                f"{self.rotary_size} (head_dim {self.head_dim})"
            )
        if not self.rope_theta > 0:
            raise ValueError(
                f"TransformerConfig.rope_theta must be positive, got {self.rope_theta}"
            )
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, RopeScaling):
                raise TypeError(
                    "TransformerConfig.rope_scaling must be a RopeScaling or None, got "
                    f"{type(self.rope_scaling).__name__}"
                )
            n = len(self.rope_scaling.divisors)
            if self.rope_scaling.kind == "divisors" and n != self.rotary_size // 2:
                raise ValueError(
                    f"RopeScaling has {n} divisors but the rotary embedding has "
                    f"{self.rotary_size // 2} frequencies (rotary_dim / 2)"
                )
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(
                f"TransformerConfig.activation must be one of {ACTIVATIONS}, got "
                f"{self.activation!r}"
            )
        for flag in ("attn_bias", "attn_out_bias", "mlp_bias", "parallel_residual"):
            value = getattr(self, flag)
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"TransformerConfig.{flag} must be a bool or None, got {value!r}")
        if not isinstance(self.qk_norm, bool):
            raise TypeError(f"TransformerConfig.qk_norm must be a bool, got {self.qk_norm!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads if self.d_head is None else self.d_head

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.style != "llama":
            return 4 * self.d_model
        return -(-(8 * self.d_model) // 3 // 64) * 64

    @property
    def num_positions(self) -> int:
        if self.max_positions is not None:
            return self.max_positions
        return 1024 if self.style == "gpt2" else 0

    @property
    def rotary(self) -> bool:
        """Rotary position embeddings (llama, neox)."""
        return self.style != "gpt2"

    @property
    def rotary_size(self) -> int:
        """R: rotated dimensions of each head (0 without rotary embeddings)."""
        if not self.rotary:
            return 0
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def layer_norm(self) -> bool:
        """LayerNorm with a bias (gpt2, neox); RMSNorm otherwise."""
        return self.style != "llama"

    @property
    def gated_mlp(self) -> bool:
        return self.style == "llama"

    @property
    def mlp_activation(self) -> str:
        if self.activation is not None:
            return self.activation
        return {"gpt2": "gelu_tanh", "neox": "gelu", "llama": "silu"}[self.style]

    def _style_default(self, value):
        return self.style != "llama" if value is None else value

    @property
    def has_attn_bias(self) -> bool:
        return self._style_default(self.attn_bias)

    @property
    def has_attn_out_bias(self) -> bool:
        return self._style_default(self.attn_out_bias)

    @property
    def has_mlp_bias(self) -> bool:
        return self._style_default(self.mlp_bias)

    @property
    def has_parallel_residual(self) -> bool:
        return self.style == "neox" if self.parallel_residual is None else self.parallel_residual


def rope_frequencies(config: TransformerConfig) -> np.ndarray:
    """The rotary angular frequencies f_i (radians per position), float32 [rotary_dim / 2],
    computed in float64: rope_theta^(−2i/R), then `config.rope_scaling`."""
    R = config.rotary_size
    inv_freq = config.rope_theta ** (-np.arange(0, R, 2, dtype=np.float64) / R)
    scaling = config.rope_scaling
    if scaling is None:
        pass
    elif scaling.kind == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.kind == "divisors":
        inv_freq = inv_freq / np.asarray(scaling.divisors, np.float64)
    else:  # llama3
        old = scaling.original_max_positions
        wavelen = 2 * np.pi / inv_freq
        low_wavelen, high_wavelen = old / scaling.low_freq_factor, old / scaling.high_freq_factor
        smooth = (old / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        interpolated = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        inv_freq = np.where(
            wavelen > low_wavelen,
            inv_freq / scaling.factor,
            np.where(wavelen < high_wavelen, inv_freq, interpolated),
        )
    return inv_freq.astype(np.float32)


class KVCache(NamedTuple):
    """Preallocated keys/values of every layer and the number of valid rows per sequence."""

    k: tuple[jax.Array, ...]  # n_layers x [B, K, S, E]
    v: tuple[jax.Array, ...]  # n_layers x [B, K, S, E]
    lengths: jax.Array  # [B] int32


# ----------------------------------------------------------------------------- parameters


def init(config: TransformerConfig, key) -> dict:
    D, F, n, E = config.d_model, config.ff_dim, config.n_layers, config.head_dim
    HE, KE = config.n_heads * E, config.kv_heads * E
    std, out_std = 0.02, 0.02 / math.sqrt(2 * n)
    k_io, k_q, k_k, k_v, k_o, k_1, k_2, k_3 = jax.random.split(key, 8)
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    ones = lambda *shape: jnp.ones(shape, jnp.float32)

    def norm(*lead):
        if config.layer_norm:
            return {"scale": ones(*lead, D), "bias": zeros(*lead, D)}
        return {"scale": ones(*lead, D)}

    attn = {
        "wq": _layers.normal(k_q, (n, D, HE), std),
        "wk": _layers.normal(k_k, (n, D, KE), std),
        "wv": _layers.normal(k_v, (n, D, KE), std),
        "wo": _layers.normal(k_o, (n, HE, D), out_std),
    }
    if config.has_attn_bias:
        attn.update(bq=zeros(n, HE), bk=zeros(n, KE), bv=zeros(n, KE))
    if config.has_attn_out_bias:
        attn["bo"] = zeros(n, D)
    if config.qk_norm:
        attn.update(q_norm=ones(n, E), k_norm=ones(n, E))
    if config.gated_mlp:
        mlp = {
            "w_gate": _layers.normal(k_1, (n, D, F), std),
            "w_up": _layers.normal(k_3, (n, D, F), std),
            "w_down": _layers.normal(k_2, (n, F, D), out_std),
        }
        if config.has_mlp_bias:
            mlp.update(b_gate=zeros(n, F), b_up=zeros(n, F), b_down=zeros(n, D))
    else:
        mlp = {
            "w_in": _layers.normal(k_1, (n, D, F), std),
            "w_out": _layers.normal(k_2, (n, F, D), out_std),
        }
        if config.has_mlp_bias:
            mlp.update(b_in=zeros(n, F), b_out=zeros(n, D))
    params = heads.init(config, k_io)
    params["layers"] = {"attn_norm": norm(n), "attn": attn, "mlp_norm": norm(n), "mlp": mlp}
    params["final_norm"] = norm()
    return params


# ----------------------------------------------------------------------------- forward


def _norm(config, p, x_BxLxD):
    if config.layer_norm:
        return _layers.layer_norm(x_BxLxD, p["scale"], p["bias"], config.norm_eps)
    return _layers.rms_norm(x_BxLxD, p["scale"], config.norm_eps)


def _rope(x_BxLxHxE, positions_BxL, inv_freq_F):
    """Rotates dimension i with i + F of the first 2F dimensions of every head by the angle
    position · inv_freq[i] (half-split pairs); dimensions 2F .. E − 1 pass through."""
    R = 2 * inv_freq_F.shape[0]
    angle_BxLx1xF = (
        positions_BxL.astype(jnp.float32)[:, :, None, None]
        * jnp.asarray(inv_freq_F, jnp.float32)[None, None, None]
    )
    cos, sin = jnp.cos(angle_BxLx1xF), jnp.sin(angle_BxLx1xF)
    x1, x2, rest = x_BxLxHxE[..., : R // 2], x_BxLxHxE[..., R // 2 : R], x_BxLxHxE[..., R:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def _qkv(config, attn, h_BxLxD, positions_BxL):
    B, L, _ = h_BxLxD.shape
    H, K, E = config.n_heads, config.kv_heads, config.head_dim
    q = _layers.dense(h_BxLxD, attn["wq"], attn.get("bq"), config.dtype)
    k = _layers.dense(h_BxLxD, attn["wk"], attn.get("bk"), config.dtype)
    v = _layers.dense(h_BxLxD, attn["wv"], attn.get("bv"), config.dtype)
    q_BxLxHxE, k_BxLxKxE, v_BxLxKxE = (
        q.reshape(B, L, H, E),
        k.reshape(B, L, K, E),
        v.reshape(B, L, K, E),
    )
    if config.qk_norm:
        q_BxLxHxE = _layers.rms_norm(q_BxLxHxE, attn["q_norm"], config.norm_eps)
        k_BxLxKxE = _layers.rms_norm(k_BxLxKxE, attn["k_norm"], config.norm_eps)
    if config.rotary:
        inv_freq_F = rope_frequencies(config)
        q_BxLxHxE = _rope(q_BxLxHxE, positions_BxL, inv_freq_F)
        k_BxLxKxE = _rope(k_BxLxKxE, positions_BxL, inv_freq_F)
    return q_BxLxHxE, k_BxLxKxE, v_BxLxKxE


_ACTIVATION_FNS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def _mlp(config, mlp, h_BxLxD):
    act = _ACTIVATION_FNS[config.mlp_activation]
    if not config.gated_mlp:
        h_BxLxF = act(_layers.dense(h_BxLxD, mlp["w_in"], mlp.get("b_in"), config.dtype))
        return _layers.dense(h_BxLxF, mlp["w_out"], mlp.get("b_out"), config.dtype)
    gate_BxLxF = act(_layers.dense(h_BxLxD, mlp["w_gate"], mlp.get("b_gate"), config.dtype))
    h_BxLxF = gate_BxLxF * _layers.dense(h_BxLxD, mlp["w_up"], mlp.get("b_up"), config.dtype)
    return _layers.dense(h_BxLxF, mlp["w_down"], mlp.get("b_down"), config.dtype)


def _layer(config, layer, x_BxLxD, positions_BxL, attend):
    """One pre-norm block; `attend(q, k, v) -> (o_BxLxHxE, extra)` picks the attention form."""
    B, L, _ = x_BxLxD.shape
    h_BxLxD = _norm(config, layer["attn_norm"], x_BxLxD)
    o_BxLxHxE, extra = attend(*_qkv(config, layer["attn"], h_BxLxD, positions_BxL))
    attn_BxLxD = _layers.dense(
        o_BxLxHxE.reshape(B, L, -1), layer["attn"]["wo"], layer["attn"].get("bo"), config.dtype
    )
    if config.has_parallel_residual:
        mlp_BxLxD = _mlp(config, layer["mlp"], _norm(config, layer["mlp_norm"], x_BxLxD))
        return x_BxLxD + attn_BxLxD + mlp_BxLxD, extra
    x_BxLxD = x_BxLxD + attn_BxLxD
    x_BxLxD = x_BxLxD + _mlp(config, layer["mlp"], _norm(config, layer["mlp_norm"], x_BxLxD))
    return x_BxLxD, extra


def _kernel_implementation(config):
    """The kernel dispatchers' implementation ("reference" runs their XLA forms)."""
    return "xla" if config.implementation == "reference" else config.implementation


def _whole_sequence_attention(config, q_BxLxHxE, k_BxLxKxE, v_BxLxKxE):
    q, k, v = (a.astype(config.dtype) for a in (q_BxLxHxE, k_BxLxKxE, v_BxLxKxE))
    o = causal_attention(q, k, v, implementation=config.implementation, interpret=config.interpret)
    return o, None


def hidden_states(config: TransformerConfig, params: dict, inputs):
    """Whole sequences -> the final (normalised) hidden states x_BxLxD in config.dtype: what
    the head (`heads.output`, or the fused `heads.token_logprobs`) is applied to."""
    heads.check_inputs(config, inputs, step=False)
    B, L = inputs.shape[:2]
    heads.check_positions(config, L)
    positions_BxL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    x_BxLxD = heads.embed(config, params, inputs, positions_BxL)
    attend = functools.partial(_whole_sequence_attention, config)

    def body(x_BxLxD, layer):
        return _layer(config, layer, x_BxLxD, positions_BxL, attend)

    if config.remat:
        body = jax.checkpoint(body)
    x_BxLxD, _ = lax.scan(body, x_BxLxD, params["layers"])
    return _norm(config, params["final_norm"], x_BxLxD)


def apply(config: TransformerConfig, params: dict, inputs):
    """Whole sequences: tokens [B, L] -> logits [B, L, V], or vectors [B, L, C] ->
    GaussianPrediction([B, L, C], [B, L, C]) (float32). Output t sees inputs 0..t."""
    return heads.output(config, params, hidden_states(config, params, inputs))


# ----------------------------------------------------------------------------- generation


def init_cache(config: TransformerConfig, batch: int, max_len: int) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` positions."""
    _layers.check_positive("batch", batch)
    _layers.check_positive("max_len", max_len)
    heads.check_positions(config, max_len)
    shape = (batch, config.kv_heads, max_len, config.head_dim)
    zeros = lambda: tuple(jnp.zeros(shape, config.dtype) for _ in range(config.n_layers))
    return KVCache(zeros(), zeros(), jnp.zeros((batch,), jnp.int32))


def _check_cache(config, cache, batch, new):
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache from init_cache, got {type(cache).__name__}")
    shapes = {tuple(a.shape) for a in (*cache.k, *cache.v)}
    S = cache.k[0].shape[2] if cache.k and cache.k[0].ndim == 4 else None
    want = (batch, config.kv_heads, S, config.head_dim)
    n = config.n_layers
    if S is None or shapes != {want} or len(cache.k) != n or len(cache.v) != n:
        raise ValueError(
            f"cache holds {len(cache.k)} layers of shapes {sorted(shapes)}, which do not fit "
            f"this config and a batch of {batch}; create it with init_cache(config, {batch}, "
            "max_len)"
        )
    dtypes = {jnp.dtype(a.dtype) for a in (*cache.k, *cache.v)}
    if dtypes != {jnp.dtype(config.dtype)}:
        raise ValueError(
            f"cache holds {sorted(map(str, dtypes))} keys/values but config.dtype is "
            f"{config.dtype!r}; create it with init_cache(config, {batch}, max_len)"
        )
    if new > S:
        raise ValueError(
            f"{new} new positions do not fit a cache of capacity {S}; allocate a larger cache"
        )
    _layers.check_lengths_fit(cache.lengths, new, S, "cache capacity")
    _layers.check_lengths_fit(cache.lengths, new, config.num_positions or None, "max_positions")
    return S


def _nan_if_past(config, out, lengths_B, new, S):
    limit = min(S, config.num_positions) if config.num_positions else S
    return jax.tree.map(lambda a: _layers.overflow_to_nan(a, lengths_B, new, limit), out)


def _cached_layers(config, params, x_BxLxD, positions_BxL, cache, attend_with):
    """Runs the layers one by one (a Python loop, not a scan), so that each layer's cache is
    its own buffer, updated in place when donated: a decode step then touches only the new
    row and the valid rows, never copies the whole cache."""
    ks, vs = [], []
    for i in range(config.n_layers):
        layer = jax.tree.map(lambda a, i=i: a[i], params["layers"])
        attend = attend_with(cache.k[i], cache.v[i])
        x_BxLxD, (k, v) = _layer(config, layer, x_BxLxD, positions_BxL, attend)
        ks.append(k)
        vs.append(v)
    return x_BxLxD, tuple(ks), tuple(vs)


def prefill(config: TransformerConfig, params: dict, inputs, cache: KVCache):
    """Appends a block of inputs ([B, L] or [B, L, C]) to the cache; returns (outputs, cache).

    Works on an empty cache or after earlier prefill/decode calls (position b continues at
    cache.lengths[b]). The outputs equal `apply` on the concatenated sequence.
    """
    heads.check_inputs(config, inputs, step=False)
    B, L = inputs.shape[:2]
    S = _check_cache(config, cache, B, L)
    lengths_B = cache.lengths
    positions_BxL = lengths_B[:, None] + jnp.arange(L, dtype=jnp.int32)[None]
    x_BxLxD = heads.embed(config, params, inputs, positions_BxL)
    b_Bx1 = jnp.arange(B)[:, None]

    def write(c_BxKxSxE, new_BxLxKxE):
        # row lengths[b] + t; rows past S are dropped (under jit, when a sequence overflows;
        # its outputs are NaN) instead of clamping the block back onto valid rows
        return c_BxKxSxE.at[b_Bx1, :, positions_BxL].set(
            new_BxLxKxE.astype(c_BxKxSxE.dtype), mode="drop"
        )

    def attend_with(k_BxKxSxE, v_BxKxSxE):
        def attend(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE):
            k_cache, v_cache = write(k_BxKxSxE, k_BxLxKxE), write(v_BxKxSxE, v_BxLxKxE)
            # query at position p sees cache rows 0..p; rows past the block (stale or NaN
            # garbage) are masked in the scores and the values
            o = prefill_attention(
                q_BxLxHxE.astype(config.dtype),
                k_cache,
                v_cache,
                lengths_B,
                implementation=config.implementation,
            )
            return o, (k_cache, v_cache)

        return attend

    x_BxLxD, k, v = _cached_layers(config, params, x_BxLxD, positions_BxL, cache, attend_with)
    out = heads.output(config, params, _norm(config, params["final_norm"], x_BxLxD))
    return _nan_if_past(config, out, lengths_B, L, S), KVCache(k, v, lengths_B + L)


def decode_step(config: TransformerConfig, params: dict, input_B, cache: KVCache):
    """One new position per sequence: token [B] or vector [B, C] -> (logits [B, V] or
    GaussianPrediction([B, C], [B, C]), cache)."""
    heads.check_inputs(config, input_B, step=True)
    B = input_B.shape[0]
    S = _check_cache(config, cache, B, 1)
    lengths_B = cache.lengths
    positions_Bx1 = lengths_B[:, None]
    x_Bx1xD = heads.embed(config, params, input_B[:, None], positions_Bx1)

    def attend_with(k_BxKxSxE, v_BxKxSxE):
        def attend(q_Bx1xHxE, k_Bx1xKxE, v_Bx1xKxE):
            k_cache, v_cache = append_kv(
                k_BxKxSxE, v_BxKxSxE, k_Bx1xKxE[:, 0], v_Bx1xKxE[:, 0], lengths_B
            )
            o_BxHxE = decode_attention(
                q_Bx1xHxE[:, 0].astype(config.dtype),
                k_cache,
                v_cache,
                lengths_B + 1,
                implementation=_kernel_implementation(config),
                interpret=config.interpret,
            )
            return o_BxHxE[:, None], (k_cache, v_cache)

        return attend

    x_Bx1xD, k, v = _cached_layers(config, params, x_Bx1xD, positions_Bx1, cache, attend_with)
    out = heads.output(config, params, _norm(config, params["final_norm"], x_Bx1xD[:, 0]))
    return _nan_if_past(config, out, lengths_B, 1, S), KVCache(k, v, lengths_B + 1)
