"""Flash-decoding kernel against the reference: ragged lengths around block boundaries, GQA
ratios, NaN beyond the lengths, outputs and gradients.

`TestDecodeKernel` runs natively on GPU/TPU; the Interpret subclasses run it on CPU.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import _dispatch
from kernels.decode_attention import api, append_kv, decode_attention, reference

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}
BLOCK = 8  # small blocks keep interpret mode cheap; the dispatcher picks hardware sizes


def _inputs(seed, B, H, K, S, E, dtype, lengths):
    # NumPy's generator: on CPU each eager `jax.random.normal` shape compiles a program.
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, E), dtype=np.float32)
    kc, vc = rng.standard_normal((2, B, K, S, E), dtype=np.float32)
    lengths = np.asarray(lengths, np.int32)
    beyond = np.arange(S)[None, None, :, None] >= lengths[:, None, None, None]
    kc, vc = np.where(beyond, np.nan, kc), np.where(beyond, np.nan, vc)
    return (*(jnp.asarray(a.astype(dtype)) for a in (q, kc, vc)), jnp.asarray(lengths))


def _rel_err(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)


FAST_COMPILE = {"xla_backend_optimization_level": 0}  # see tests/test_kernels_scan.py
SLOW = pytest.mark.slow
_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
# The default run: each GQA ratio once, bfloat16 once, gradients once.
_DECODE_DEFAULT = {(2, "f32", False), (6, "f32", True), (8, "f32", False), (6, "bf16", False)}


class TestDecodeKernel:
    INTERPRET = False
    TARGET = None

    def setup_method(self):
        if not self.INTERPRET and _dispatch.platform() == "cpu":
            pytest.skip("native Pallas needs a GPU or TPU (the Interpret subclass runs on CPU)")

    def _assert_matches(
        self, H, K, dtype, blocks_per_split=2, E=16, seed=0, grads=True, q_dtype=None
    ):
        target = self.TARGET or ("tpu" if self.INTERPRET else _dispatch.platform())
        block = 16 if target == "gpu" else BLOCK
        # Ragged lengths: 1, block−1, block, block+1, several splits, the full cache S.
        S = 5 * block + (0 if target == "gpu" else 3)  # GPU blocks tile S; TPU may overhang
        lengths = [1, block - 1, block, block + 1, 3 * block + 5, S]
        q, kc, vc, lens = _inputs(seed, len(lengths), H, K, S, E, dtype, lengths)
        q = q.astype(q_dtype or dtype)
        blocks = api.DecodeBlocks(block, blocks_per_split)
        kernel = lambda q, k, v: api._decode_pallas(
            q, k, v, lens, 0.25, blocks, self.INTERPRET, target
        )
        ref = lambda q, k, v: reference.decode_attention_reference(q, k, v, lens, scale=0.25)
        g = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(q.shape, np.float32))

        def both(q, kc, vc, g):
            out = []
            for fn in (kernel, ref):
                o, vjp = jax.vjp(fn, q, kc, vc)
                out.append((o, vjp(g.astype(o.dtype)) if grads else ()))
            return out

        args = (q, kc, vc, g)
        (o, dg), (o_ref, dg_ref) = jax.jit(both).trace(*args).lower().compile(FAST_COMPILE)(*args)
        assert np.isfinite(np.asarray(o, np.float32)).all(), "NaN beyond a length leaked"
        assert _rel_err(o, o_ref) <= TOL[dtype], _rel_err(o, o_ref)
        for name, a, b in zip("qkv" if grads else "", dg, dg_ref, strict=True):
            a = jnp.nan_to_num(a.astype(jnp.float32), nan=1e9)  # a NaN would fail the bound
            assert _rel_err(a, b) <= TOL[dtype], (name, _rel_err(a, b))

    # GQA ratios 1, 3, 8 (query heads per KV head) in float32 and bfloat16, outputs and
    # gradients (the backward recomputes through the reference): a subset by default, the
    # whole grid under -m slow.
    @pytest.mark.parametrize(
        "H, K, dtype, grads",
        [
            pytest.param(H, K, d, g, marks=() if (H, d, g) in _DECODE_DEFAULT else SLOW)
            for (H, K), d, g in itertools.product(
                [(2, 2), (6, 2), (8, 1)], ["f32", "bf16"], [False, True]
            )
        ],
    )
    def test_gqa(self, H, K, dtype, grads):
        self._assert_matches(H, K, _DTYPES[dtype], grads=grads)

    def test_bf16_cache_f32_queries(self):
        """A bfloat16 cache with float32 queries."""
        self._assert_matches(6, 2, jnp.bfloat16, blocks_per_split=3, q_dtype=jnp.float32)

    @pytest.mark.slow
    @pytest.mark.parametrize("blocks_per_split", [1, 4, 8])
    @pytest.mark.parametrize("H, K", [(1, 1), (9, 3), (16, 2), (32, 2)])
    def test_sweep(self, H, K, blocks_per_split):
        self._assert_matches(
            H, K, jnp.float32, blocks_per_split=blocks_per_split, E=32, grads=False
        )

    def test_dispatcher_and_zero_length(self):
        """Through `decode_attention` with the dispatcher's block sizes; length 0 gives zeros."""
        q, kc, vc, lens = _inputs(3, 3, 4, 2, 80, 16, jnp.float32, [0, 5, 77])
        o = decode_attention(q, kc, vc, lens, implementation="pallas", interpret=self.INTERPRET)
        o_ref = decode_attention(q, kc, vc, lens, implementation="xla")
        assert float(jnp.abs(o[0]).max()) == 0.0
        assert _rel_err(o, o_ref) <= 1e-5


class TestDecodeKernelInterpret(TestDecodeKernel):
    INTERPRET = True


class TestDecodeKernelInterpretGpuForm(TestDecodeKernel):
    """The GPU (Triton) form — lengths as an input block; fewer than 16 query heads per KV
    head row by row (no padding), 16 or more as a matmul — interpreted."""

    INTERPRET = True
    TARGET = "gpu"
    test_dispatcher_and_zero_length = None

    # The default run takes one case (GQA 3, gradients); -m slow the grid, and a matmul form.
    @pytest.mark.parametrize(
        "H, K, dtype, grads",
        [
            pytest.param(H, K, d, g, marks=() if (H, d, g) == (6, "f32", True) else SLOW)
            for (H, K), d, g in itertools.product(
                [(2, 2), (6, 2), (8, 1), (32, 2)], ["f32", "bf16"], [False, True]
            )
        ],
    )
    def test_gqa(self, H, K, dtype, grads):
        self._assert_matches(H, K, _DTYPES[dtype], blocks_per_split=3, grads=grads)

    @SLOW
    def test_bf16_cache_f32_queries(self):
        super().test_bf16_cache_f32_queries()


def test_append_then_decode_equals_full_attention():
    """Growing the cache token by token (donated) and decoding equals causal attention."""
    B, H, K, S, E, T = 2, 4, 2, 12, 8, 7
    rng = np.random.default_rng(9)
    q_BxTxHxE = jnp.asarray(rng.standard_normal((B, T, H, E), np.float32))
    k_BxTxKxE = jnp.asarray(rng.standard_normal((B, T, K, E), np.float32))
    v_BxTxKxE = jnp.asarray(rng.standard_normal((B, T, K, E), np.float32))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(kc, vc, lengths, q, kk, vv):
        kc, vc = append_kv(kc, vc, kk, vv, lengths)
        return kc, vc, decode_attention(q, kc, vc, lengths + 1, implementation="xla")

    kc, vc = jnp.zeros((B, K, S, E)), jnp.zeros((B, K, S, E))
    lengths = jnp.zeros(B, jnp.int32)
    outs = []
    for t in range(T):
        kc, vc, o = step(kc, vc, lengths, q_BxTxHxE[:, t], k_BxTxKxE[:, t], v_BxTxKxE[:, t])
        lengths = lengths + 1
        outs.append(o)
    o_BxTxHxE = jnp.stack(outs, 1)
    kr = jnp.repeat(k_BxTxKxE, H // K, axis=2)
    vr = jnp.repeat(v_BxTxKxE, H // K, axis=2)
    s = jnp.einsum("bthe,bshe->bhts", q_BxTxHxE, kr) / np.sqrt(E)
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool))[None, None], s, -jnp.inf)
    want = jnp.einsum("bhts,bshe->bthe", jax.nn.softmax(s, axis=-1), vr)
    assert _rel_err(o_BxTxHxE, want) <= 1e-5


def test_decode_rejects_bad_arguments():
    q, kc, vc, lens = (
        jnp.zeros((2, 4, 16)),
        jnp.zeros((2, 2, 8, 16)),
        jnp.zeros((2, 2, 8, 16)),
        jnp.ones(2, jnp.int32),
    )
    with pytest.raises(ValueError, match="v_cache"):
        decode_attention(q, kc, vc[:, :, :4], lens)
    if _dispatch.platform() == "cpu":
        with pytest.raises(ValueError, match="interpret=True"):
            decode_attention(q, kc, vc, lens, implementation="pallas")
    with pytest.raises(TypeError, match="floating"):
        decode_attention(q.astype(jnp.int32), kc, vc, lens)


def test_append_kv_refuses_rows_outside_the_cache():
    kc = vc = jnp.zeros((2, 1, 4, 2))
    k = v = jnp.ones((2, 1, 2))
    for lengths in ([4, 0], [1, -1]):
        with pytest.raises(ValueError, match="outside the cache"):
            append_kv(kc, vc, k, v, jnp.asarray(lengths, jnp.int32))


def test_append_kv_under_jit_drops_rows_outside_the_cache_exactly():
    """Traced lengths: a full sequence (length S) and a negative length write nothing — no
    clamping onto row S − 1, no wrap-around — and the other sequence's row is written."""
    S = 4
    kc = jnp.arange(3 * S * 2, dtype=jnp.float32).reshape(3, 1, S, 2)
    k = jnp.full((3, 1, 2), -7.0)
    new_k, new_v = jax.jit(append_kv)(kc, kc, k, k, jnp.asarray([S, -1, 2], jnp.int32))
    want = np.asarray(kc).copy()
    want[2, 0, 2] = -7.0
    np.testing.assert_array_equal(np.asarray(new_k), want)
    np.testing.assert_array_equal(np.asarray(new_v), want)
