"""Dispatcher for whole-sequence causal attention and for prefill over a KV cache.

The form is chosen by the platform the program is lowered for (`kernels._dispatch.select`,
through `lax.platform_dependent`), so one jitted training step lowers for CPU, TPU and NVIDIA
GPUs alike, forward and backward:

  implementation  cpu                       tpu                 cuda
  "xla"           blockwise                 blockwise           blockwise
  "pallas"        interpret=True: splash    splash attention    cuDNN flash attention
  "auto"          blockwise (splash when    splash, else        cuDNN, else blockwise
                  interpret=True)           blockwise
  "reference"     the quadratic reference on every platform (full L×L scores; the oracle)

- blockwise: `kernels.attention.blockwise`, plain JAX (online softmax, `custom_vjp` that
  recomputes blocks, causal blocks skipped, O(L) memory); 128-row blocks on CPU, 512 elsewhere.
- splash: JAX's TPU kernel (`jax.experimental.pallas.ops.tpu.splash_attention`), a library
  kernel with its own backward; lengths are padded to a multiple of 128 (inert under the
  causal mask) and q is pre-scaled.
- cuDNN: `jax.nn.dot_product_attention(..., is_causal=True, implementation="cudnn")`, the GPU
  kernel form here (a library kernel, not Pallas). It takes float16/bfloat16 with head_dim a
  multiple of 8 and <= 256 (128 before Hopper), and jaxlib's CUDA plugin at trace time; with
  float32 (or without the plugin) "auto" uses the blockwise form on GPUs.

Naming a kernel that cannot take the arguments raises (at once outside jit, else when lowered
for that platform); "auto" falls back to the blockwise form.

Prefill (`prefill_attention`, queries continuing a cache at per-sequence offsets) is always
the blockwise form (or the reference): neither library kernel takes per-sequence offsets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from kernels import _dispatch
from kernels.attention import reference
from kernels.attention.blockwise import blockwise_attention

__all__ = ["IMPLEMENTATIONS", "causal_attention", "prefill_attention"]

IMPLEMENTATIONS = (*_dispatch.IMPLEMENTATIONS, "reference")
# Rows per block of the blockwise form: small tiles are fastest on CPU (measured with
# `python -m benchmarks.memory --attention`), accelerators want fewer, bigger loop steps.
CPU_BLOCK = 128
DEVICE_BLOCK = 512
SPLASH_BLOCK = 512  # splash tiles (multiples of 128; smaller when L is short)


# ----------------------------------------------------------------------------- layouts


def _to_blocked(q_BxLxHxE, K):
    B, L, H, E = q_BxLxHxE.shape
    return jnp.moveaxis(q_BxLxHxE.reshape(B, L, K, H // K, E), 1, 3)  # [B, K, R, L, E]


def _from_blocked(o_BxKxRxLxE):
    B, K, R, L, E = o_BxKxRxLxE.shape
    return jnp.moveaxis(o_BxKxRxLxE, 3, 1).reshape(B, L, K * R, E)


def _blockwise_whole(q, k, v, *, scale, block):
    K = k.shape[2]
    o = blockwise_attention(
        _to_blocked(q, K), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), scale=scale, block=block
    )
    return _from_blocked(o)


# ----------------------------------------------------------------------------- library kernels


def _splash(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, *, scale, interpret):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    L, H = q_BxLxHxE.shape[1:3]
    Lp = -(-L // 128) * 128  # tiles are multiples of 128; causal padding at the end is inert
    block = next(b for b in (SPLASH_BLOCK, 256, 128) if Lp % b == 0)
    mask = sa.MultiHeadMask([sa.CausalMask((Lp, Lp))] * H)
    sizes = sa.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    kernel = sa.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )

    def heads_major(x):
        return jnp.swapaxes(jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, 0))), 1, 2)

    q = (q_BxLxHxE * jnp.asarray(scale, q_BxLxHxE.dtype)).astype(q_BxLxHxE.dtype)
    args = (heads_major(q), heads_major(k_BxLxKxE), heads_major(v_BxLxKxE))
    o_BxHxLxE = _per_batch_shard(jax.vmap(kernel), args)
    return jnp.swapaxes(o_BxHxLxE, 1, 2)[:, :L]


def _per_batch_shard(fn, args):
    """fn(*args), run per shard of the batch axis when it is sharded over explicit mesh axes
    (a Pallas call cannot be partitioned by the compiler, nor batched over such an axis)."""
    sharding = getattr(jax.typeof(args[0]), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return fn(*args)
    batch = P(spec[0])
    return jax.shard_map(
        fn, mesh=sharding.mesh, in_specs=(batch,) * len(args), out_specs=batch, check_vma=False
    )(*args)


def _cudnn(q, k, v, *, scale):
    return jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=True, implementation="cudnn"
    )


def _kernel_problem(target, q, k, v, scale):
    """None when the `target` library kernel takes these arguments, else the reason."""
    if target == "tpu":
        if q.dtype not in (jnp.float32, jnp.bfloat16):
            return f"splash attention takes float32 or bfloat16, got {q.dtype}"
        return None
    E = q.shape[-1]
    if q.dtype not in (jnp.float16, jnp.bfloat16):
        return f"cuDNN flash attention takes float16/bfloat16, got {q.dtype}"
    if E % 8 or E > 256:
        return f"cuDNN flash attention needs head_dim a multiple of 8 and <= 256, got {E}"
    try:  # cuDNN's checks run at trace time (version, head_dim for the local GPU)
        jax.eval_shape(functools.partial(_cudnn, scale=scale), q, k, v)
    except (RuntimeError, NotImplementedError, ValueError) as err:
        return f"cuDNN flash attention cannot be traced here ({err})"
    return None


# ----------------------------------------------------------------------------- public


def _check(q, k, v, implementation, interpret, block_size):
    if q.ndim != 4:
        raise ValueError(f"q_BxLxHxE has shape {tuple(q.shape)}; expected [B, L, H, E]")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"attention: implementation={implementation!r} is not one of {IMPLEMENTATIONS}"
        )
    if not isinstance(interpret, bool):
        raise TypeError(f"attention: interpret must be a bool, got {interpret!r}")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"attention: {name} must be floating point, got dtype {a.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"attention: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )


def causal_attention(
    q_BxLxHxE,
    k_BxLxKxE,
    v_BxLxKxE,
    *,
    scale=None,
    implementation="auto",
    block_size=None,
    interpret=False,
):
    """softmax(q·kᵀ·scale, causal)·v over whole sequences: query t sees keys 0 .. t.

    Args:
      q_BxLxHxE: queries, H heads.  k_BxLxKxE, v_BxLxKxE: K key/value heads (K divides H;
        query head h reads KV head h // (H // K)).  All three share one float dtype.
      scale: score scale, 1/sqrt(E) if None.
      implementation: see the module docstring.  block_size: rows per block of the blockwise
        form (None: 128 on CPU, 512 on accelerators).  interpret: run splash in interpret
        mode (CPU tests).
    Returns:
      o_BxLxHxE in q's dtype. Memory is O(L) in the forward and backward pass except for
      implementation="reference".
    """
    _check(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, implementation, interpret, block_size)
    B, L, H, E = q_BxLxHxE.shape
    if k_BxLxKxE.ndim != 4 or k_BxLxKxE.shape[:2] != (B, L) or k_BxLxKxE.shape[3] != E:
        raise ValueError(
            f"k_BxLxKxE has shape {tuple(k_BxLxKxE.shape)}; expected [B={B}, L={L}, K, E={E}]"
        )
    K = k_BxLxKxE.shape[2]
    if v_BxLxKxE.shape != k_BxLxKxE.shape:
        raise ValueError(
            f"v_BxLxKxE has shape {tuple(v_BxLxKxE.shape)}; expected k's {k_BxLxKxE.shape}"
        )
    if H % K:
        raise ValueError(f"K={K} key/value heads must divide the H={H} query heads")
    if L < 1:
        raise ValueError("attention over an empty sequence (L = 0)")
    scale = float(E) ** -0.5 if scale is None else float(scale)
    args = (q_BxLxHxE, k_BxLxKxE, v_BxLxKxE)
    if implementation == "reference":
        return reference.causal_attention_reference(*args, scale=scale)

    def blockwise(block):
        return functools.partial(_blockwise_whole, scale=scale, block=block_size or block)

    def kernel(target, interpret=False):
        if target == "tpu":
            return functools.partial(_splash, scale=scale, interpret=interpret)
        return functools.partial(_cudnn, scale=scale)

    fn = _dispatch.select(
        "causal_attention",
        implementation,
        interpret,
        xla={"cpu": blockwise(CPU_BLOCK), "default": blockwise(DEVICE_BLOCK)},
        pallas=kernel,
        unsupported=lambda target: _kernel_problem(target, *args, scale),
    )
    return fn(*args)


def prefill_attention(
    q_BxTxHxE,
    k_cache_BxKxSxE,
    v_cache_BxKxSxE,
    offsets_B,
    *,
    scale=None,
    implementation="auto",
    block_size=None,
):
    """A block of T queries continuing a KV cache: query t of sequence b sits at position
    offsets[b] + t and sees cache rows 0 .. offsets[b] + t (the block's own keys must already
    be written there). Rows at or past offsets[b] + T are never used, even if they hold NaN.

    Returns o_BxTxHxE in q's dtype; memory O(T + S). `implementation="reference"` builds the
    full [T, S] scores; every other value runs the blockwise form.
    """
    _check(q_BxTxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, implementation, False, block_size)
    B, _, H, E = q_BxTxHxE.shape
    if k_cache_BxKxSxE.ndim != 4 or k_cache_BxKxSxE.shape[0] != B or k_cache_BxKxSxE.shape[3] != E:
        raise ValueError(
            f"k_cache_BxKxSxE has shape {tuple(k_cache_BxKxSxE.shape)}; expected "
            f"[B={B}, K, S, E={E}]"
        )
    K = k_cache_BxKxSxE.shape[1]
    if v_cache_BxKxSxE.shape != k_cache_BxKxSxE.shape:
        raise ValueError(
            f"v_cache_BxKxSxE has shape {tuple(v_cache_BxKxSxE.shape)}; expected k's "
            f"{tuple(k_cache_BxKxSxE.shape)}"
        )
    if H % K:
        raise ValueError(f"K={K} key/value heads must divide the H={H} query heads")
    if offsets_B.shape != (B,) or not jnp.issubdtype(offsets_B.dtype, jnp.integer):
        raise ValueError(
            f"offsets_B must be an integer array of shape ({B},), got {offsets_B.dtype} "
            f"{tuple(offsets_B.shape)}"
        )
    scale = float(E) ** -0.5 if scale is None else float(scale)
    offsets_B = offsets_B.astype(jnp.int32)
    if implementation == "reference":
        return reference.prefill_attention_reference(
            q_BxTxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, offsets_B, scale=scale
        )

    def blockwise(block):
        def run(q, k, v, offsets):
            o = blockwise_attention(
                _to_blocked(q, K),
                k,
                v,
                offsets,
                scale=scale,
                block=block_size or block,
                garbage_rows=True,
            )
            return _from_blocked(o)

        return run

    fn = _dispatch.select(
        "prefill_attention",
        "xla",
        False,
        xla={"cpu": blockwise(CPU_BLOCK), "default": blockwise(DEVICE_BLOCK)},
        pallas=None,
    )
    return fn(q_BxTxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, offsets_B)
