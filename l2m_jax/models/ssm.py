"""Mamba-1 and Mamba-2 as pure functions: a parallel form for whole sequences (through
`kernels.scan`) and a recurrent step for decoding, computing the same numbers.

Block: x + mixer(RMSNorm(x)), final RMSNorm, then the head (heads.py). Shape suffix I (and
the variable Di) is the inner width expand·D.

Mamba-1 mixer (I = expand·D inner channels, N = d_state, R = dt_rank, W = d_conv):
  x, z = split(h @ in_proj);  x = silu(causal_depthwise_conv(x));
  dt_low, B, C = split(x @ x_proj);  dt = softplus(dt_low @ dt_proj + dt_bias);
  A = −exp(A_log);  h_t = exp(dt_t·A) ⊙ h_{t−1} + dt_t·x_t·B_t;  y_t = h_t·C_t + D ⊙ x_t;
  out = (y ⊙ silu(z)) @ out_proj.
Mamba-2 mixer (SSD; H = I / head_dim heads of width P = head_dim, G groups share B and C):
  z, xBC, dt = split(h @ in_proj);  xBC = silu(causal_depthwise_conv(xBC));  x, B, C = split;
  dt = softplus(dt + dt_bias);  A_h = −exp(A_log_h) (one scalar per head);
  h_t = exp(dt_t·A_h) h_{t−1} + dt_t x_t ⊗ B_t;  y_t = h_t C_t + D_h x_t;
  out = RMSNorm(y ⊙ silu(z)) @ out_proj   (the gated norm over each group's I / G channels,
  as in the Mamba-2 reference).

Parameters (layers stacked on axis 0, n = n_layers; F = conv channels: I for Mamba-1,
I + 2·G·N for Mamba-2):
  embed/..., positions?, head/...   as in heads.py
  layers/norm/scale [n, D]    layers/in_proj [n, D, 2I] (Mamba-2: [n, D, 2I + 2GN + H])
  layers/conv_w [n, W, F]     layers/conv_b [n, F]      (y_t = Σ_k conv_w[k]·x_{t−W+1+k} + b)
  Mamba-1: layers/x_proj [n, I, R + 2N]  dt_proj [n, R, I]  dt_bias [n, I]  A_log [n, I, N]
           D [n, I]  out_proj [n, I, D]
  Mamba-2: layers/dt_bias [n, H]  A_log [n, H]  D [n, H]  gate_norm [n, I]  out_proj [n, I, D]
  final_norm/scale [D]

The recurrent state (`SSMCache`) is the conv window of the last W − 1 conv inputs and the SSM
state (Mamba-1 [B, I, N], Mamba-2 [B, H, P, N]) per layer; its size does not grow with the
position. `max_len` in `init_cache` only matters with learned positions (it must not exceed
max_positions); decoding past max_positions raises when lengths are concrete and gives NaN
outputs under jit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels.scan import selective_scan, ssd
from l2m_jax.models import _layers, heads

__all__ = ["Mamba2Config", "MambaConfig", "SSMCache"]


@dataclasses.dataclass(frozen=True)
class MambaConfig:
    """Mamba-1 (selective scan).

    Attributes:
      vocab_size: V (GPT-NeoX's 50 280 by default, as the Mamba checkpoints).
      d_model: D.  n_layers: blocks.  d_state: N, state per inner channel (>= 1).
      d_conv: W, causal depthwise conv width.  expand: inner channels I = expand·D.
      dt_rank: R, rank of the Δ projection; None means ceil(D / 16).
      max_positions: learned absolute positions P (0 = none).
      norm_eps: RMSNorm epsilon.  tie_embeddings: unembed with the token embedding.
      head, channels, bos_id: as in TransformerConfig.
      implementation, interpret: passed to `kernels.scan.selective_scan`.
      remat: recompute each layer's activations in the backward pass (`jax.checkpoint`).
      dtype: "float32" or "bfloat16": activations and projection operands in this type, with
        float32 accumulation and norm statistics; Δ, the scan's arithmetic, its state and the
        recurrent cache stay float32; parameters are float32.
    """

    vocab_size: int = 50280
    d_model: int = 768
    n_layers: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    max_positions: int = 0
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
        _layers.check_common(self)
        _layers.check_positive("MambaConfig.d_state (the SSM state size)", self.d_state)
        _layers.check_positive("MambaConfig.d_conv", self.d_conv)
        _layers.check_positive("MambaConfig.expand", self.expand)
        if self.dt_rank is not None:
            _layers.check_positive("MambaConfig.dt_rank", self.dt_rank)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def time_step_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    @property
    def conv_dim(self) -> int:
        return self.d_inner

    @property
    def num_positions(self) -> int:
        return self.max_positions


@dataclasses.dataclass(frozen=True)
class Mamba2Config:
    """Mamba-2 (state-space duality, chunked).

    Attributes:
      vocab_size: V (GPT-NeoX's 50 280 by default).
      d_model: D.  n_layers: blocks.  d_state: N per head (>= 1).  d_conv: W.
      expand: inner channels I = expand·D.  head_dim: P, channels per head (divides I;
        n_heads = I / P).  n_groups: G, groups sharing B and C (divides n_heads).
      chunk_size: positions per chunk of the SSD algorithm (parallel form).
      max_positions, norm_eps, tie_embeddings, head, channels, bos_id: as in MambaConfig.
      implementation, interpret: passed to `kernels.scan.ssd`.
      remat: recompute each layer's activations in the backward pass (`jax.checkpoint`).
      dtype: "float32" or "bfloat16": as in MambaConfig.
    """

    vocab_size: int = 50280
    d_model: int = 768
    n_layers: int = 24
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    head_dim: int = 64
    n_groups: int = 1
    chunk_size: int = 64
    max_positions: int = 0
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
        _layers.check_common(self)
        _layers.check_positive("Mamba2Config.d_state (the SSM state size)", self.d_state)
        _layers.check_positive("Mamba2Config.d_conv", self.d_conv)
        _layers.check_positive("Mamba2Config.expand", self.expand)
        _layers.check_positive("Mamba2Config.head_dim", self.head_dim)
        _layers.check_positive("Mamba2Config.n_groups", self.n_groups)
        _layers.check_positive("Mamba2Config.chunk_size", self.chunk_size)
        if self.d_inner % self.head_dim:
            raise ValueError(
                f"Mamba2Config: head_dim={self.head_dim} does not divide the inner width "
                f"expand·d_model={self.d_inner}; choose a divisor"
            )
        if self.n_heads % self.n_groups:
            raise ValueError(
                f"Mamba2Config: n_groups={self.n_groups} does not divide n_heads={self.n_heads}"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    @property
    def num_positions(self) -> int:
        return self.max_positions


class SSMCache(NamedTuple):
    """Recurrent state of every layer and the number of positions seen per sequence."""

    conv: jax.Array  # [n_layers, B, d_conv - 1, conv_dim]
    ssm: jax.Array  # [n_layers, B, I, N] (Mamba-1) or [n_layers, B, H, P, N] (Mamba-2)
    lengths: jax.Array  # [B] int32


# ----------------------------------------------------------------------------- parameters


def _inverse_softplus_dt(key, shape, dt_min=1e-3, dt_max=0.1):
    """Bias b with softplus(b) log-uniform in [dt_min, dt_max] (the Mamba initialisation)."""
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), 1e-4)
    return dt + jnp.log(-jnp.expm1(-dt))


def init(config, key) -> dict:
    D, Di, N, W, n = config.d_model, config.d_inner, config.d_state, config.d_conv, config.n_layers
    F = config.conv_dim
    ks = jax.random.split(key, 9)
    lin = lambda k, fan_in, shape: _layers.uniform(k, shape, 1.0 / math.sqrt(fan_in))
    layers = {
        "norm": {"scale": jnp.ones((n, D), jnp.float32)},
        "conv_w": lin(ks[1], W, (n, W, F)),
        "conv_b": lin(ks[2], W, (n, F)),
        "out_proj": lin(ks[3], Di, (n, Di, D)) / math.sqrt(n),
        "D": jnp.ones(
            (n, Di) if isinstance(config, MambaConfig) else (n, config.n_heads), jnp.float32
        ),
    }
    if isinstance(config, MambaConfig):
        R = config.time_step_rank
        layers.update(
            in_proj=lin(ks[4], D, (n, D, 2 * Di)),
            x_proj=lin(ks[5], Di, (n, Di, R + 2 * N)),
            dt_proj=_layers.uniform(ks[6], (n, R, Di), R**-0.5),
            dt_bias=_inverse_softplus_dt(ks[7], (n, Di)),
            A_log=jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.float32), (n, Di, N))),
        )
    else:
        H = config.n_heads
        layers.update(
            in_proj=lin(ks[4], D, (n, D, 2 * Di + 2 * config.n_groups * N + H)),
            dt_bias=_inverse_softplus_dt(ks[7], (n, H)),
            A_log=jnp.log(jax.random.uniform(ks[5], (n, H), jnp.float32, 1.0, 16.0)),
            gate_norm=jnp.ones((n, Di), jnp.float32),
        )
    params = heads.init(config, ks[0])
    params["layers"] = layers
    params["final_norm"] = {"scale": jnp.ones((D,), jnp.float32)}
    return params


# ----------------------------------------------------------------------------- mixers


def _causal_conv(x_BxLxF, window_BxWxF, w_KxF, b_F):
    """Depthwise causal conv continuing from the last K − 1 inputs; returns (y, new window)."""
    K = w_KxF.shape[0]
    L = x_BxLxF.shape[1]
    xp_BxMxF = jnp.concatenate([window_BxWxF, x_BxLxF], axis=1)  # M = K − 1 + L
    y_BxLxF = _layers.bc(b_F, x_BxLxF)
    for k in range(K):
        y_BxLxF = y_BxLxF + xp_BxMxF[:, k : k + L] * _layers.bc(w_KxF[k], x_BxLxF)
    return y_BxLxF.astype(x_BxLxF.dtype), xp_BxMxF[:, L:].astype(window_BxWxF.dtype)


def _mamba1_recurrent(x_Bx1xI, dt_Bx1xI, A_IxN, B_Bx1xN, C_Bx1xN, h_BxIxN):
    """One step of the selective recurrence (the decode form)."""
    x, dt, Bm, Cm = x_Bx1xI[:, 0], dt_Bx1xI[:, 0], B_Bx1xN[:, 0], C_Bx1xN[:, 0]
    decay_BxIxN = jnp.exp(dt[:, :, None] * A_IxN[None])
    h_BxIxN = decay_BxIxN * h_BxIxN + (dt * x)[:, :, None] * Bm[:, None, :]
    return jnp.einsum("bin,bn->bi", h_BxIxN, Cm)[:, None], h_BxIxN


def _mamba2_recurrent(x_Bx1xHxP, dt_Bx1xH, A_H, B_Bx1xGxN, C_Bx1xGxN, h_BxHxPxN):
    """One step of the SSD recurrence (the decode form)."""
    H = x_Bx1xHxP.shape[2]
    G = B_Bx1xGxN.shape[2]
    x, dt = x_Bx1xHxP[:, 0], dt_Bx1xH[:, 0]
    Bm, Cm = (jnp.repeat(a[:, 0], H // G, axis=1) for a in (B_Bx1xGxN, C_Bx1xGxN))
    decay_BxH = jnp.exp(dt * A_H[None])
    inject_BxHxPxN = (dt[:, :, None] * x)[..., None] * Bm[:, :, None, :]
    h_BxHxPxN = decay_BxH[:, :, None, None] * h_BxHxPxN + inject_BxHxPxN
    return jnp.einsum("bhpn,bhn->bhp", h_BxHxPxN, Cm)[:, None], h_BxHxPxN


def _mamba1_mixer(config, p, h_BxLxD, window, state, recurrent):
    Di, N, R = config.d_inner, config.d_state, config.time_step_rank
    xz_BxLx2I = _layers.dense(h_BxLxD, p["in_proj"], None, config.dtype)
    x_BxLxI, z_BxLxI = xz_BxLx2I[..., :Di], xz_BxLx2I[..., Di:]
    x_BxLxI, window = _causal_conv(x_BxLxI, window, p["conv_w"], p["conv_b"])
    x_BxLxI = jax.nn.silu(x_BxLxI)
    dbc = _layers.dense(x_BxLxI, p["x_proj"], None, config.dtype)
    dt_BxLxI = jax.nn.softplus(_layers.dense(dbc[..., :R], p["dt_proj"], p["dt_bias"]))
    B_BxLxN, C_BxLxN = dbc[..., R : R + N], dbc[..., R + N :]
    A_IxN = -jnp.exp(p["A_log"])
    if recurrent:
        y_BxLxI, state = _mamba1_recurrent(x_BxLxI, dt_BxLxI, A_IxN, B_BxLxN, C_BxLxN, state)
    else:
        y_BxLxI, state = selective_scan(
            x_BxLxI,
            dt_BxLxI,
            A_IxN,
            B_BxLxN,
            C_BxLxN,
            h0_BxDxN=state,
            implementation=config.implementation,
            interpret=config.interpret,
        )
    y_BxLxI = (y_BxLxI + x_BxLxI * _layers.bc(p["D"], x_BxLxI)) * jax.nn.silu(z_BxLxI)
    return _layers.dense(y_BxLxI, p["out_proj"], None, config.dtype), window, state


def _mamba2_mixer(config, p, h_BxLxD, window, state, recurrent):
    B, L, _ = h_BxLxD.shape
    Di, N, G, H, P = (
        config.d_inner,
        config.d_state,
        config.n_groups,
        config.n_heads,
        config.head_dim,
    )
    zxbcdt = _layers.dense(h_BxLxD, p["in_proj"], None, config.dtype)
    z_BxLxI, xbc, dt_BxLxH = (
        zxbcdt[..., :Di],
        zxbcdt[..., Di : 2 * Di + 2 * G * N],
        zxbcdt[..., -H:],
    )
    xbc, window = _causal_conv(xbc, window, p["conv_w"], p["conv_b"])
    xbc = jax.nn.silu(xbc)
    x_BxLxHxP = xbc[..., :Di].reshape(B, L, H, P)
    B_BxLxGxN = xbc[..., Di : Di + G * N].reshape(B, L, G, N)
    C_BxLxGxN = xbc[..., Di + G * N :].reshape(B, L, G, N)
    dt_BxLxH = jax.nn.softplus(dt_BxLxH + _layers.bc(p["dt_bias"], dt_BxLxH))
    A_H = -jnp.exp(p["A_log"])
    if recurrent:
        y, state = _mamba2_recurrent(x_BxLxHxP, dt_BxLxH, A_H, B_BxLxGxN, C_BxLxGxN, state)
    else:
        y, state = ssd(
            x_BxLxHxP,
            dt_BxLxH,
            A_H,
            B_BxLxGxN,
            C_BxLxGxN,
            chunk_size=config.chunk_size,
            h0_BxHxPxN=state,
            implementation=config.implementation,
            interpret=config.interpret,
        )
    y_BxLxHxP = y + x_BxLxHxP * p["D"][None, None, :, None]
    y_BxLxI = y_BxLxHxP.reshape(B, L, Di) * jax.nn.silu(z_BxLxI)
    # RMSNorm per group. Written with repeat rather than reshape -> normalise -> reshape: XLA
    # CPU (jax 0.10.2) miscompiles the jitted, vmapped gradient of the latter across the batch.
    ms_BxLxG = jnp.mean(jnp.square(y_BxLxI.reshape(B, L, G, Di // G)), axis=-1)
    inv_BxLxI = jnp.repeat(lax.rsqrt(ms_BxLxG + config.norm_eps), Di // G, axis=-1)
    y_BxLxI = y_BxLxI * inv_BxLxI * _layers.bc(p["gate_norm"], y_BxLxI)
    return _layers.dense(y_BxLxI, p["out_proj"], None, config.dtype), window, state


# ----------------------------------------------------------------------------- forward


def _run(config, params, inputs, positions_BxL, windows, states, recurrent):
    """Embeds, runs every block (carrying per-layer states); returns the final normalised
    hidden states x_BxLxD (config.dtype) and the new states."""
    mixer = _mamba1_mixer if isinstance(config, MambaConfig) else _mamba2_mixer
    x_BxLxD = heads.embed(config, params, inputs, positions_BxL)
    B = x_BxLxD.shape[0]
    W, F = config.d_conv - 1, config.conv_dim

    def body(x_BxLxD, xs):
        layer, window, state = xs
        if window is None:  # a fresh sequence: zero conv window, zero SSM state
            window = jnp.zeros((B, W, F), jnp.float32)
        h_BxLxD = _layers.rms_norm(x_BxLxD, layer["norm"]["scale"], config.norm_eps)
        out_BxLxD, window, state = mixer(config, layer, h_BxLxD, window, state, recurrent)
        return x_BxLxD + out_BxLxD, (window, state)

    if config.remat and not recurrent:
        body = jax.checkpoint(body)
    x_BxLxD, (windows, states) = lax.scan(body, x_BxLxD, (params["layers"], windows, states))
    x_BxLxD = _layers.rms_norm(x_BxLxD, params["final_norm"]["scale"], config.norm_eps)
    return x_BxLxD, windows, states


def hidden_states(config, params: dict, inputs):
    """Whole sequences -> the final (normalised) hidden states x_BxLxD in config.dtype: what
    the head (`heads.output`, or the fused `heads.token_logprobs`) is applied to."""
    heads.check_inputs(config, inputs, step=False)
    B, L = inputs.shape[:2]
    heads.check_positions(config, L)
    positions_BxL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    x_BxLxD, _, _ = _run(config, params, inputs, positions_BxL, None, None, recurrent=False)
    return x_BxLxD


def apply(config, params: dict, inputs):
    """Whole sequences through the parallel scan: tokens [B, L] -> logits [B, L, V], or
    vectors [B, L, C] -> GaussianPrediction([B, L, C], [B, L, C]) (float32)."""
    return heads.output(config, params, hidden_states(config, params, inputs))


def init_cache(config, batch: int, max_len: int) -> SSMCache:
    """Zero states for `batch` sequences (`max_len` is checked against max_positions only)."""
    _layers.check_positive("batch", batch)
    _layers.check_positive("max_len", max_len)
    heads.check_positions(config, max_len)
    n = config.n_layers
    if isinstance(config, MambaConfig):
        ssm_shape = (n, batch, config.d_inner, config.d_state)
    else:
        ssm_shape = (n, batch, config.n_heads, config.head_dim, config.d_state)
    return SSMCache(
        jnp.zeros((n, batch, config.d_conv - 1, config.conv_dim), jnp.float32),
        jnp.zeros(ssm_shape, jnp.float32),
        jnp.zeros((batch,), jnp.int32),
    )


def _check_cache(config, cache, batch, new):
    if not isinstance(cache, SSMCache):
        raise TypeError(f"cache must be an SSMCache from init_cache, got {type(cache).__name__}")
    want = _cache_shapes(config, batch)
    if (cache.conv.shape, cache.ssm.shape) != want:
        raise ValueError(
            f"cache states have shapes {cache.conv.shape}, {cache.ssm.shape}, which do not fit "
            f"this config and a batch of {batch}; create it with init_cache(config, {batch}, ...)"
        )
    heads.check_positions(config, new)
    _layers.check_lengths_fit(cache.lengths, new, config.num_positions or None, "max_positions")


def _cache_shapes(config, batch):
    cache = jax.eval_shape(lambda: init_cache(config, batch, 1))
    return cache.conv.shape, cache.ssm.shape


def _finish(config, out, lengths_B, new):
    if config.num_positions:
        out = jax.tree.map(
            lambda a: _layers.overflow_to_nan(a, lengths_B, new, config.num_positions), out
        )
    return out


def prefill(config, params: dict, inputs, cache: SSMCache):
    """Runs a block of inputs from the cached states with the parallel scan; returns
    (outputs, cache). Outputs equal `apply` on the concatenated sequence."""
    heads.check_inputs(config, inputs, step=False)
    B, L = inputs.shape[:2]
    _check_cache(config, cache, B, L)
    positions_BxL = cache.lengths[:, None] + jnp.arange(L, dtype=jnp.int32)[None]
    x_BxLxD, conv, ssm_state = _run(
        config, params, inputs, positions_BxL, cache.conv, cache.ssm, recurrent=False
    )
    out = heads.output(config, params, x_BxLxD)
    return _finish(config, out, cache.lengths, L), SSMCache(conv, ssm_state, cache.lengths + L)


def decode_step(config, params: dict, input_B, cache: SSMCache):
    """One position per sequence through the recurrent step: token [B] or vector [B, C] ->
    (logits [B, V] or GaussianPrediction([B, C], [B, C]), cache)."""
    heads.check_inputs(config, input_B, step=True)
    B = input_B.shape[0]
    _check_cache(config, cache, B, 1)
    x_Bx1xD, conv, ssm_state = _run(
        config, params, input_B[:, None], cache.lengths[:, None], cache.conv, cache.ssm, True
    )
    out = heads.output(config, params, x_Bx1xD[:, 0])
    return _finish(config, out, cache.lengths, 1), SSMCache(conv, ssm_state, cache.lengths + 1)
