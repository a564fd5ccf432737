"""Pallas scans against the sequential `lax.scan` oracle: outputs, final states and gradients.

`TestScanKernel` runs the kernels natively on GPU/TPU; `TestScanKernelInterpret` runs the same
checks on CPU in interpret mode (both the TPU form, state carried across a sequential chunk grid
axis in scratch, and the GPU form, an in-program loop over chunks).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import _dispatch
from kernels.scan import api, reference

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}
SLOW = pytest.mark.slow
SSD_CHUNK = 8  # small blocks so lengths around a block boundary stay cheap in interpret mode


def _ssd_inputs(key, B, L, H, P, G, N, dtype):
    k = jax.random.split(key, 6)
    return (
        jax.random.normal(k[0], (B, L, H, P)).astype(dtype),
        (0.5 * jax.nn.softplus(jax.random.normal(k[1], (B, L, H)))).astype(dtype),
        -jnp.exp(0.5 * jax.random.normal(k[2], (H,))),
        jax.random.normal(k[3], (B, L, G, N)).astype(dtype),
        jax.random.normal(k[4], (B, L, G, N)).astype(dtype),
        jax.random.normal(k[5], (B, H, P, N)),
    )


def _selective_inputs(key, B, L, D, N, dtype):
    k = jax.random.split(key, 6)
    return (
        jax.random.normal(k[0], (B, L, D)).astype(dtype),
        (0.5 * jax.nn.softplus(jax.random.normal(k[1], (B, L, D)))).astype(dtype),
        -jnp.exp(0.5 * jax.random.normal(k[2], (D, N))),
        jax.random.normal(k[3], (B, L, N)).astype(dtype),
        jax.random.normal(k[4], (B, L, N)).astype(dtype),
        jax.random.normal(k[5], (B, D, N)),
    )


def _value_and_grads(fn, args, key):
    """(y, h) and the gradients of <y, gy> + <h, gh> for fixed random cotangents."""
    y, h = fn(*args)
    k1, k2 = jax.random.split(key)
    gy = jax.random.normal(k1, y.shape, jnp.float32)
    gh = jax.random.normal(k2, h.shape, jnp.float32)

    def loss(*a):
        y, h = fn(*a)
        return jnp.sum(y.astype(jnp.float32) * gy) + jnp.sum(h * gh)

    return (y, h), jax.grad(loss, argnums=tuple(range(len(args))))(*args)


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _both(kernel, oracle, args, key, grads=True):
    """Values (and gradients) of the kernel and of the oracle, in one compilation."""
    if not grads:
        return (kernel(*args), ()), (oracle(*args), ())
    return _value_and_grads(kernel, args, key), _value_and_grads(oracle, args, key)


def _assert_close(got, want, tol, what):
    for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        scale = max(float(np.abs(w).max()), 1e-30)
        err = float(np.abs(g - w).max()) / scale
        assert err <= tol, f"{what}[{i}]: max error {err:.2e} relative to max |ref| > {tol}"


class TestScanKernel:
    INTERPRET = False
    TARGET = None  # None: the form the platform builds

    def setup_method(self):
        if not self.INTERPRET and _dispatch.platform() == "cpu":
            pytest.skip("native Pallas needs a GPU or TPU (the Interpret subclass runs on CPU)")

    def _target(self):
        return self.TARGET or ("tpu" if self.INTERPRET else _dispatch.platform())

    def _check_ssd(self, B, L, H, P, G, N, dtype, chunk=SSD_CHUNK, seed=0, grads=True):
        args = _ssd_inputs(jax.random.key(seed), B, L, H, P, G, N, dtype)
        target, interpret = self._target(), self.INTERPRET
        if target == "gpu":
            chunk = max(chunk, 16)  # Triton's dot needs every dimension >= 16

        def kernel(x, dt, A, Bm, Cm, h0):
            return api._ssd_pallas(x, dt, A, Bm, Cm, h0, chunk, interpret, target)

        def oracle(x, dt, A, Bm, Cm, h0):
            return reference.ssd_sequential(x, dt, A, Bm, Cm, h0_BxHxPxN=h0)

        got, want = _both(kernel, oracle, args, jax.random.key(seed + 1), grads)
        _assert_close(got[0], want[0], TOL[dtype], "ssd outputs")
        _assert_close(got[1], want[1], TOL[dtype], "ssd gradients")

    def _check_selective(self, B, L, D, N, dtype, chunk, seed=0, grads=True):
        args = _selective_inputs(jax.random.key(seed), B, L, D, N, dtype)
        target, interpret = self._target(), self.INTERPRET

        def kernel(x, dt, A, Bm, Cm, h0):
            return api._selective_pallas(x, dt, A, Bm, Cm, h0, chunk, interpret, target)

        def oracle(x, dt, A, Bm, Cm, h0):
            return reference.selective_scan_sequential(x, dt, A, Bm, Cm, h0_BxDxN=h0)

        got, want = _both(kernel, oracle, args, jax.random.key(seed + 1), grads)
        _assert_close(got[0], want[0], TOL[dtype], "selective outputs")
        _assert_close(got[1], want[1], TOL[dtype], "selective gradients")

    # Lengths 1, block−1, block, block+1 (+ several chunks); G groups of H heads: ratios 1, 2, 4.
    # The backward is the same recomputation for every length: gradients are checked at
    # block+1 (and everywhere under -m slow), outputs and final states at every length.
    @pytest.mark.parametrize(
        "L, G, grads",
        [
            (1, 2, False),
            (SSD_CHUNK - 1, 4, False),
            (SSD_CHUNK, 1, False),
            (SSD_CHUNK + 1, 4, True),
            pytest.param(1, 2, True, marks=SLOW),
            pytest.param(SSD_CHUNK, 1, True, marks=SLOW),
            pytest.param(3 * SSD_CHUNK + 5, 2, True, marks=SLOW),
        ],
    )
    def test_ssd_fp32(self, L, G, grads):
        self._check_ssd(B=2, L=L, H=4, P=3, G=G, N=5, dtype=jnp.float32, grads=grads)

    @pytest.mark.parametrize("grads", [False, pytest.param(True, marks=SLOW)])
    def test_ssd_bf16(self, grads):
        self._check_ssd(B=2, L=SSD_CHUNK + 3, H=4, P=4, G=2, N=8, dtype=jnp.bfloat16, grads=grads)

    @pytest.mark.parametrize(
        "L, grads",
        [
            (1, False),
            (7, False),
            (8, False),
            (9, True),
            *(pytest.param(n, True, marks=SLOW) for n in (1, 8)),
        ],
    )
    def test_selective_fp32(self, L, grads):
        self._check_selective(B=2, L=L, D=6, N=3, dtype=jnp.float32, chunk=8, grads=grads)

    @pytest.mark.parametrize("grads", [False, pytest.param(True, marks=SLOW)])
    def test_selective_bf16(self, grads):
        self._check_selective(B=2, L=19, D=6, N=4, dtype=jnp.bfloat16, chunk=8, grads=grads)

    @pytest.mark.slow
    @pytest.mark.parametrize("L", [63, 64, 65, 300])
    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
    def test_ssd_sweep(self, L, dtype):
        self._check_ssd(B=2, L=L, H=8, P=16, G=2, N=16, dtype=dtype, chunk=64)

    @pytest.mark.slow
    @pytest.mark.parametrize("L", [127, 128, 129])  # around the dispatcher's chunk
    def test_selective_sweep(self, L):
        assert api._SELECTIVE_CHUNK == 128
        self._check_selective(B=2, L=L, D=130, N=16, dtype=jnp.float32, chunk=128)

    def test_dispatcher_pallas_matches_xla(self):
        x, dt, A, Bm, Cm, h0 = _ssd_inputs(jax.random.key(7), 1, 5, 2, 3, 1, 4, jnp.float32)
        kw = dict(chunk_size=SSD_CHUNK, h0_BxHxPxN=h0)
        got = api.ssd(x, dt, A, Bm, Cm, implementation="pallas", interpret=self.INTERPRET, **kw)
        want = api.ssd(x, dt, A, Bm, Cm, implementation="xla", **kw)
        _assert_close(got, want, 1e-5, "ssd dispatch")


class TestScanKernelInterpret(TestScanKernel):
    INTERPRET = True


class TestScanKernelInterpretGpuForm(TestScanKernel):
    """The GPU (Triton) form — in-program chunk loop, power-of-two padding — in interpret mode."""

    INTERPRET = True
    TARGET = "gpu"

    # A few shapes suffice: the arithmetic is shared with the TPU form.
    test_ssd_fp32 = None
    test_selective_fp32 = None
    test_ssd_sweep = None
    test_selective_sweep = None
    test_dispatcher_pallas_matches_xla = None

    test_ssd_bf16 = None
    test_selective_bf16 = None

    @pytest.mark.slow
    def test_gpu_form_bf16(self):
        self._check_ssd(B=2, L=19, H=4, P=4, G=2, N=8, dtype=jnp.bfloat16, chunk=16)
        self._check_selective(B=2, L=19, D=6, N=4, dtype=jnp.bfloat16, chunk=8)

    @pytest.mark.parametrize("grads", [False, pytest.param(True, marks=SLOW)])
    def test_ssd_gpu_form(self, grads):
        self._check_ssd(B=1, L=19, H=4, P=3, G=2, N=5, dtype=jnp.float32, chunk=16, grads=grads)

    @pytest.mark.slow
    def test_selective_gpu_form(self):
        self._check_selective(B=2, L=9, D=5, N=3, dtype=jnp.float32, chunk=8)


def test_xla_ssd_custom_vjp_matches_oracle():
    """The dispatcher's XLA path on CPU for an SSD state over the threshold: a custom_vjp with
    the sequential forward and the backward recomputed through the chunked form. (Smaller SSD
    states and the selective scan run the sequential oracle itself there.)"""
    assert api._CPU_SSD_SEQUENTIAL_GRAD_MAX < 4 * 16 * 17
    args = _ssd_inputs(jax.random.key(11), 1, 21, 4, 16, 2, 17, jnp.float32)
    fn = lambda x, dt, A, Bm, Cm, h0: api.ssd(x, dt, A, Bm, Cm, h0_BxHxPxN=h0, implementation="xla")
    oracle = lambda x, dt, A, Bm, Cm, h0: reference.ssd_sequential(x, dt, A, Bm, Cm, h0_BxHxPxN=h0)
    got, want = _both(fn, oracle, args, jax.random.key(12))
    _assert_close(got, want, 1e-5, "ssd xla")


def test_auto_falls_back_once_for_unsupported_dtype(caplog, monkeypatch):
    monkeypatch.setattr(_dispatch, "platform", lambda: "tpu")
    _dispatch._warn_once.cache_clear()
    x, dt, A, Bm, Cm, _ = _ssd_inputs(jax.random.key(3), 1, 4, 2, 2, 1, 3, jnp.float16)
    with caplog.at_level("WARNING", logger="kernels"):
        for _ in range(2):
            y, _ = api.ssd(x, dt, A, Bm, Cm, chunk_size=SSD_CHUNK)
    assert y.dtype == jnp.float16
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 2 - 1
    assert "float16" in caplog.records[0].message
    with pytest.raises(ValueError, match="float16"):
        api.ssd(x, dt, A, Bm, Cm, implementation="pallas")
