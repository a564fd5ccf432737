"""kernels.attention: the blockwise form equals the quadratic reference in outputs and gradients
(lengths around the block, GQA, prefill over a cache holding NaN garbage), splash runs in
interpret mode, and everything lowers for TPU (splash) and CUDA (cuDNN) from the CPU."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import _lowering
from kernels.attention import blockwise_attention, causal_attention, prefill_attention
from l2m_jax import models

F32, BF16 = jnp.float32, jnp.bfloat16
BLOCK = 8


def _assert_close(got, want, tol):
    """max |got - want| <= tol x the larger of 1 and max |want| (gradients can be exactly 0)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = float(np.abs(got - want).max())
    assert err <= tol * max(1.0, float(np.abs(want).max())), err


def _qkvg(B, L, H, K, E, seed=0):
    """q, k, v and an output cotangent (NumPy draws: no compiles for the inputs)."""
    rng = np.random.default_rng(seed)
    shapes = [(B, L, H, E), (B, L, K, E), (B, L, K, E), (B, L, H, E)]
    return [jnp.asarray(rng.standard_normal(s), F32) for s in shapes]


def naive_attention(q, k, v, g, visible_BxTxS):
    """Float64 NumPy oracle from the definition: o = softmax(q kᵀ / √E, masked) v, and the
    gradients of <o, g> (dP = g vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dq = dS k / √E, ...).
    q [B, T, H, E]; k, v [B, S, K, E]; query head h reads KV head h // (H / K)."""
    q, k, v, g = (np.asarray(a, np.float64) for a in (q, k, v, g))
    H, K, E = q.shape[2], k.shape[2], q.shape[3]
    kh, vh = np.repeat(k, H // K, axis=2), np.repeat(v, H // K, axis=2)
    s = np.einsum("bthe,bshe->bhts", q, kh) / np.sqrt(E)
    s = np.where(visible_BxTxS[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshe->bthe", p, vh)
    dp = np.einsum("bthe,bshe->bhts", g, vh)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(E)
    dq = np.einsum("bhts,bshe->bthe", ds, kh)
    dk = np.einsum("bhts,bthe->bshe", ds, q)
    dv = np.einsum("bhts,bthe->bshe", p, g)
    B, S = k.shape[:2]
    fold = lambda d: d.reshape(B, S, K, H // K, E).sum(3)  # sum the query heads of a group
    return o, (dq, fold(dk), fold(dv))


def _causal_mask(B, L):
    return np.broadcast_to(np.tril(np.ones((L, L), bool)), (B, L, L))


def _value_and_grads(attend, q, k, v, g):
    """(output, d<output, g>/d(q, k, v)) in one jitted call."""

    def f(q, k, v):
        o = attend(q, k, v)
        return jnp.sum(o.astype(F32) * g), o

    (_, o), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return o, grads


# L = 1, block - 1, block, block + 1 and a ragged 2.6 blocks; GQA ratios 2, 1, 4, 2 and 3
@pytest.mark.parametrize(
    "L, H, K", [(1, 4, 2), (BLOCK - 1, 4, 4), (BLOCK, 4, 1), (BLOCK + 1, 4, 2), (21, 6, 2)]
)
def test_blockwise_equals_naive_attention(L, H, K):
    q, k, v, g = _qkvg(2, L, H, K, 16, seed=L)
    o, grads = _value_and_grads(
        lambda *a: causal_attention(*a, implementation="xla", block_size=BLOCK), q, k, v, g
    )
    o_ref, grads_ref = naive_attention(q, k, v, g, _causal_mask(2, L))
    _assert_close(o, o_ref, 1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        _assert_close(got, want, 1e-5)


def test_reference_equals_naive_attention():
    """The quadratic reference (the models' former attention, dense query blocks of >= 256)
    is exact too: 300 positions cross its block boundary."""
    q, k, v, g = _qkvg(1, 300, 4, 2, 16, seed=1)
    o, grads = _value_and_grads(
        lambda *a: causal_attention(*a, implementation="reference"), q, k, v, g
    )
    o_ref, grads_ref = naive_attention(q, k, v, g, _causal_mask(1, 300))
    _assert_close(o, o_ref, 1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        _assert_close(got, want, 1e-5)


def test_bfloat16_stays_within_3e_2_of_float32():
    q, k, v, g = _qkvg(2, 21, 4, 2, 16, seed=3)
    half = [a.astype(BF16) for a in (q, k, v)]
    o, grads = _value_and_grads(
        lambda *a: causal_attention(*a, implementation="xla", block_size=BLOCK), *half, g
    )
    o_ref, grads_ref = naive_attention(*half, g, _causal_mask(2, 21))
    assert o.dtype == BF16 and all(d.dtype == BF16 for d in grads)
    # bf16 operands (relative rounding 2^-9) with float32 statistics: ~1e-2 of the scale
    _assert_close(o, o_ref, 3e-2)
    for got, want in zip(grads, grads_ref, strict=True):
        _assert_close(got, want, 3e-2)


def test_prefill_over_a_cache_with_nan_garbage():
    """Queries continuing a cache at per-sequence offsets; rows past offset + T are NaN."""
    B, T, S, H, K, E = 3, 11, 40, 4, 2, 16
    rng = np.random.default_rng(9)
    q, g = (jnp.asarray(rng.standard_normal((B, T, H, E)), F32) for _ in range(2))
    k_cache, v_cache = (jnp.asarray(rng.standard_normal((B, K, S, E)), F32) for _ in range(2))
    offsets = jnp.array([0, 5, 29], jnp.int32)  # the last one fills the cache exactly
    valid_BxS = np.arange(S)[None, :] < np.asarray(offsets + T)[:, None]
    garbage = lambda c: jnp.where(valid_BxS[:, None, :, None], c, jnp.nan)
    positions_BxT = np.asarray(offsets)[:, None] + np.arange(T)[None]
    visible_BxTxS = np.arange(S)[None, None, :] <= positions_BxT[:, :, None]
    o_ref, (dq_ref, dk_ref, dv_ref) = naive_attention(
        q, jnp.swapaxes(k_cache, 1, 2), jnp.swapaxes(v_cache, 1, 2), g, visible_BxTxS
    )
    for implementation, block in (("reference", None), ("auto", 4)):
        # block 4 divides neither T nor S, and the offsets straddle blocks
        attend = lambda q, k, v, i=implementation, b=block: prefill_attention(
            q, k, v, offsets, implementation=i, block_size=b
        )
        o, (dq, dk, dv) = _value_and_grads(attend, q, garbage(k_cache), garbage(v_cache), g)
        _assert_close(o, o_ref, 1e-5)
        _assert_close(dq, dq_ref, 1e-5)  # never NaN: garbage keys are zeroed, not just masked
        _assert_close(dk, jnp.swapaxes(dk_ref, 1, 2), 1e-5)  # exactly 0 on garbage rows
        _assert_close(dv, jnp.swapaxes(dv_ref, 1, 2), 1e-5)


def test_blockwise_rejects_mismatched_whole_sequences():
    q = jnp.zeros((1, 4, 1, 5, 8))
    with pytest.raises(ValueError, match="as many keys as queries"):
        blockwise_attention(q, jnp.zeros((1, 4, 6, 8)), jnp.zeros((1, 4, 6, 8)), scale=1, block=4)


@pytest.mark.slow
def test_splash_in_interpret_mode_matches():
    """JAX's splash kernel (the TPU form) through our padding, scaling and GQA layout."""
    q, k, v, g = _qkvg(1, 130, 4, 2, 64, seed=5)  # pads to 256: one partial tile
    o, grads = _value_and_grads(
        lambda *a: causal_attention(*a, implementation="pallas", interpret=True), q, k, v, g
    )
    o_ref, grads_ref = naive_attention(q, k, v, g, _causal_mask(1, 130))
    _assert_close(o, o_ref, 1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        _assert_close(got, want, 1e-5)


@pytest.fixture
def fake_cudnn(monkeypatch):
    """Lets the cuDNN call trace on a host without jaxlib's CUDA plugin (its lowering to the
    cuDNN custom call is then real; only the version query is faked)."""
    fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    if not hasattr(fused, "check_cudnn_version"):
        pytest.skip("this JAX has no cuDNN version check to fake")
    monkeypatch.setattr(fused, "check_cudnn_version", lambda: 91000)


def _custom_calls(text):
    import re

    return set(re.findall(r"custom_call @([\w$.]+)", text))


def test_lowers_for_tpu_and_cuda_forward_and_backward(fake_cudnn):
    def loss(q, k, v):
        return jnp.sum(causal_attention(q, k, v).astype(F32))

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    for dtype in (F32, BF16):
        args = [jax.ShapeDtypeStruct(s, dtype) for s in [(2, 300, 4, 64), *[(2, 300, 2, 64)] * 2]]
        tpu = _lowering.kernel_calls(_lowering.lower(grad, *args, platform="tpu"))
        assert {c.name for c in tpu} >= {"splash_mha_fwd_residuals", "splash_mha_dq_no_residuals"}
        cuda = _custom_calls(_lowering.lower(grad, *args, platform="cuda"))
        cudnn = {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"}
        # cuDNN takes bf16; float32 lowers the blockwise form for cuda (no custom call)
        assert cuda >= cudnn if dtype == BF16 else not cuda & cudnn
        assert not _lowering.kernel_calls(_lowering.lower(grad, *args, platform="cpu"))
    # naming a kernel that cannot run raises when lowered for that platform
    args = [jax.ShapeDtypeStruct(s, F32) for s in [(1, 64, 4, 16), *[(1, 64, 4, 16)] * 2]]
    pallas = lambda q, k, v: causal_attention(q, k, v, implementation="pallas")
    with pytest.raises(ValueError, match="float16/bfloat16"):
        _lowering.lower(pallas, *args, platform="cuda")
    with pytest.raises(ValueError, match="interpret=True"):
        _lowering.lower(pallas, *args, platform="cpu")
    assert _lowering.kernel_calls(_lowering.lower(pallas, *args, platform="tpu"))


def test_gpt2_training_step_lowers_at_4096_for_tpu_and_cuda(fake_cudnn):
    """The public training loss of the gpt2 preset at L = 4096 (remat), forward and backward:
    splash kernels on tpu, cuDNN on cuda (bf16), nothing L×L anywhere."""
    L = 4096
    for dtype, platform in (("float32", "tpu"), ("bfloat16", "cuda")):
        config = dataclasses.replace(
            models.preset("gpt2"), remat=True, max_positions=L, dtype=dtype
        )
        params = jax.eval_shape(lambda c=config: models.init(c, jax.random.key(0)))
        tokens = jax.ShapeDtypeStruct((1, L), jnp.int32)
        logprob = models.token_logprob_fn(config)
        step = jax.value_and_grad(lambda p, t, f=logprob: -jnp.mean(f(p, t)))
        text = _lowering.lower(step, params, tokens, platform=platform)
        if platform == "tpu":
            names = {c.name for c in _lowering.kernel_calls(text)}
            assert {"splash_mha_fwd_residuals", "splash_mha_dkv_no_residuals"} <= names
        else:
            assert {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"} <= _custom_calls(text)


def test_bad_arguments_raise_clear_errors():
    q, k, v, _ = _qkvg(1, 8, 4, 2, 16)
    with pytest.raises(ValueError, match="implementation="):
        causal_attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="interpret=True"):
        causal_attention(q, k, v, implementation="pallas")  # outside jit, on CPU
    with pytest.raises(ValueError, match="must divide the H=4"):
        causal_attention(q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2))
    with pytest.raises(ValueError, match="expected k's"):
        causal_attention(q, k, v[:, :4])
    with pytest.raises(TypeError, match="share a dtype"):
        causal_attention(q, k.astype(BF16), v)
    with pytest.raises(ValueError, match="block_size"):
        causal_attention(q, k, v, block_size=0)
    cache = jnp.zeros((1, 2, 16, 16))
    with pytest.raises(ValueError, match="offsets_B"):
        prefill_attention(q, cache, cache, jnp.zeros((2,), jnp.int32))
