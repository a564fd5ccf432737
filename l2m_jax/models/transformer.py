"""Decoder-only transformer, GPT-2 style or Llama style, as pure functions over a param pytree.

Parameters (nested dicts of float32 arrays; `n` = n_layers, layers stacked on axis 0 so one
`lax.scan` runs them; H query heads, K key/value heads, E head_dim, F d_ff):

  embed/tokens [V, D]             (head="tokens"; Gaussian MLP otherwise, see heads.py)
  positions [P, D]                learned absolute positions when num_positions P > 0
  layers/attn_norm/scale [n, D]   (+ /bias [n, D] for gpt2: LayerNorm; llama: RMSNorm)
  layers/attn/wq [n, D, H·E]  wk, wv [n, D, K·E]  wo [n, H·E, D]   (+ bq, bk, bv, bo for gpt2)
  layers/mlp_norm/scale [n, D]    (+ /bias for gpt2)
  layers/mlp/w_in [n, D, F] b_in [n, F] w_out [n, F, D] b_out [n, D]      gpt2 (GELU, tanh)
  layers/mlp/w_gate [n, D, F] w_up [n, D, F] w_down [n, F, D]             llama (SwiGLU)
  final_norm/scale [D]            (+ /bias for gpt2)
  head/...                        untied unembedding [D, V] or the Gaussian head

Projections are `x @ w` (w is [in, out]). Query/key heads are laid out head-major: columns
h·E .. h·E + E − 1 of wq belong to head h.

Rotary embeddings (llama): the half-split convention of Hugging Face Llama — dimension i of a
head is rotated together with dimension i + E/2, with frequency rope_theta^(−2i/E). Meta and
GGUF checkpoints store Q/K with adjacent pairs (2i, 2i+1): permute the rows of each head's
block when importing (new[:, h·E + i] = old[:, h·E + 2i], new[:, h·E + E/2 + i] = old[:, h·E +
2i + 1]).

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
from jax import lax

from kernels.attention import causal_attention, prefill_attention
from kernels.decode_attention import append_kv, decode_attention
from l2m_jax.models import _layers, heads

__all__ = ["KVCache", "TransformerConfig"]

STYLES = ("gpt2", "llama")
# The kernel implementations, plus the quadratic reference attention (for checks).
IMPLEMENTATIONS = (*_layers.IMPLEMENTATIONS, "reference")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A decoder-only transformer.

    Attributes:
      style: "gpt2" (LayerNorm, GELU MLP, biases, learned positions) or "llama" (RMSNorm,
        SwiGLU MLP, no biases, rotary positions, grouped-query attention).
      vocab_size: V, tokens (head="tokens"); ignored by the Gaussian head but kept valid.
      d_model: D, residual width.  n_layers: blocks.  n_heads: H query heads (divide D).
      n_kv_heads: K key/value heads (divide H); None means K = H.
      d_ff: MLP hidden width; None means 4·D (gpt2) or 8/3·D rounded up to 64 (llama).
      max_positions: learned absolute positions P; None means 1024 for gpt2, 0 (none) for
        llama. Sequences (and caches) cannot be longer than P when P > 0.
      rope_theta: rotary base (llama; 1e4 Llama-2, 1e5 SmolLM2).
      norm_eps: epsilon of LayerNorm / RMSNorm.
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
        norm and softmax statistics; parameters stay float32.
    """

    style: str = "gpt2"
    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_positions: int | None = None
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
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
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerConfig: n_heads={self.n_heads} does not divide d_model="
                f"{self.d_model}; choose n_heads among the divisors of d_model"
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
        if self.style == "llama" and self.head_dim % 2:
            raise ValueError(
                f"TransformerConfig: rotary embeddings need an even head_dim, got "
                f"{self.head_dim} (d_model / n_heads)"
            )
        if not self.rope_theta > 0:
            raise ValueError(
                f"TransformerConfig.rope_theta must be positive, got {self.rope_theta}"
            )

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.style == "gpt2":
            return 4 * self.d_model
        return -(-(8 * self.d_model) // 3 // 64) * 64

    @property
    def num_positions(self) -> int:
        if self.max_positions is not None:
            return self.max_positions
        return 1024 if self.style == "gpt2" else 0


class KVCache(NamedTuple):
    """Preallocated keys/values of every layer and the number of valid rows per sequence."""

    k: tuple[jax.Array, ...]  # n_layers x [B, K, S, E]
    v: tuple[jax.Array, ...]  # n_layers x [B, K, S, E]
    lengths: jax.Array  # [B] int32


# ----------------------------------------------------------------------------- parameters


def init(config: TransformerConfig, key) -> dict:
    D, F, n = config.d_model, config.ff_dim, config.n_layers
    HE, KE = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    gpt2 = config.style == "gpt2"
    std, out_std = 0.02, 0.02 / math.sqrt(2 * n)
    k_io, k_q, k_k, k_v, k_o, k_1, k_2, k_3 = jax.random.split(key, 8)
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    ones = lambda *shape: jnp.ones(shape, jnp.float32)

    def norm(*lead):
        return (
            {"scale": ones(*lead, D), "bias": zeros(*lead, D)}
            if gpt2
            else {"scale": ones(*lead, D)}
        )

    attn = {
        "wq": _layers.normal(k_q, (n, D, HE), std),
        "wk": _layers.normal(k_k, (n, D, KE), std),
        "wv": _layers.normal(k_v, (n, D, KE), std),
        "wo": _layers.normal(k_o, (n, HE, D), out_std),
    }
    if gpt2:
        attn.update(bq=zeros(n, HE), bk=zeros(n, KE), bv=zeros(n, KE), bo=zeros(n, D))
        mlp = {
            "w_in": _layers.normal(k_1, (n, D, F), std),
            "b_in": zeros(n, F),
            "w_out": _layers.normal(k_2, (n, F, D), out_std),
            "b_out": zeros(n, D),
        }
    else:
        mlp = {
            "w_gate": _layers.normal(k_1, (n, D, F), std),
            "w_up": _layers.normal(k_3, (n, D, F), std),
            "w_down": _layers.normal(k_2, (n, F, D), out_std),
        }
    params = heads.init(config, k_io)
    params["layers"] = {"attn_norm": norm(n), "attn": attn, "mlp_norm": norm(n), "mlp": mlp}
    params["final_norm"] = norm()
    return params


# ----------------------------------------------------------------------------- forward


def _norm(config, p, x_BxLxD):
    if config.style == "gpt2":
        return _layers.layer_norm(x_BxLxD, p["scale"], p["bias"], config.norm_eps)
    return _layers.rms_norm(x_BxLxD, p["scale"], config.norm_eps)


def _rope(x_BxLxHxE, positions_BxL, theta):
    E = x_BxLxHxE.shape[-1]
    half = E // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / E)
    angle_BxLx1xF = positions_BxL.astype(jnp.float32)[:, :, None, None] * inv_freq[None, None, None]
    cos, sin = jnp.cos(angle_BxLx1xF), jnp.sin(angle_BxLx1xF)
    x1, x2 = x_BxLxHxE[..., :half], x_BxLxHxE[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


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
    if config.style == "llama":
        q_BxLxHxE = _rope(q_BxLxHxE, positions_BxL, config.rope_theta)
        k_BxLxKxE = _rope(k_BxLxKxE, positions_BxL, config.rope_theta)
    return q_BxLxHxE, k_BxLxKxE, v_BxLxKxE


def _mlp(config, mlp, h_BxLxD):
    if config.style == "gpt2":
        h_BxLxF = jax.nn.gelu(_layers.dense(h_BxLxD, mlp["w_in"], mlp["b_in"], config.dtype))
        return _layers.dense(h_BxLxF, mlp["w_out"], mlp["b_out"], config.dtype)
    gate_BxLxF = jax.nn.silu(_layers.dense(h_BxLxD, mlp["w_gate"], None, config.dtype))
    h_BxLxF = gate_BxLxF * _layers.dense(h_BxLxD, mlp["w_up"], None, config.dtype)
    return _layers.dense(h_BxLxF, mlp["w_down"], None, config.dtype)


def _layer(config, layer, x_BxLxD, positions_BxL, attend):
    """One pre-norm block; `attend(q, k, v) -> (o_BxLxHxE, extra)` picks the attention form."""
    B, L, _ = x_BxLxD.shape
    h_BxLxD = _norm(config, layer["attn_norm"], x_BxLxD)
    o_BxLxHxE, extra = attend(*_qkv(config, layer["attn"], h_BxLxD, positions_BxL))
    x_BxLxD = x_BxLxD + _layers.dense(
        o_BxLxHxE.reshape(B, L, -1), layer["attn"]["wo"], layer["attn"].get("bo"), config.dtype
    )
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
