"""Scan kernels against the sequential `lax.scan` oracle: outputs, final states and gradients
(`jax.grad` of the oracle) of the Pallas kernels (forward and backward kernels) and of the XLA
forms with the chunk-boundary backward.

`TestScanKernel` runs the kernels natively on GPU/TPU; `TestScanKernelInterpret` runs the same
checks on CPU in interpret mode with the TPU form, `TestScanKernelInterpretGpuForm` with the
GPU form. The default run takes a representative subset; `-m slow` runs the whole grid:
lengths 1, T − 1, T, T + 1, 3T + 5, heads per group (SSD) 1, 3, 8, float32 and bfloat16.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import _dispatch
from kernels.scan import api, pallas, reference, xla

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}
SLOW = pytest.mark.slow
CHUNK = 8  # TPU-form chunk in interpret mode (small: cheap); the GPU form needs >= 16


# Inputs come from NumPy's generator: on CPU every eager `jax.random.normal` of a new shape
# compiles its own program (seconds each under load), and these tests make many shapes.
def _normal(rng, shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32).astype(dtype))


def _step(rng, shape, dtype):  # 0.5 · softplus(normal)
    return jnp.asarray((0.5 * np.logaddexp(0.0, rng.standard_normal(shape))).astype(dtype))


def _ssd_inputs(seed, B, L, H, P, G, N, dtype):
    rng = np.random.default_rng(seed)
    return (
        _normal(rng, (B, L, H, P), dtype),
        _step(rng, (B, L, H), dtype),
        jnp.asarray(-np.exp(0.5 * rng.standard_normal(H)).astype(np.float32)),
        _normal(rng, (B, L, G, N), dtype),
        _normal(rng, (B, L, G, N), dtype),
        _normal(rng, (B, H, P, N)),
    )


def _selective_inputs(seed, B, L, D, N, dtype):
    rng = np.random.default_rng(seed)
    return (
        _normal(rng, (B, L, D), dtype),
        _step(rng, (B, L, D), dtype),
        jnp.asarray(-np.exp(0.5 * rng.standard_normal((D, N))).astype(np.float32)),
        _normal(rng, (B, L, N), dtype),
        _normal(rng, (B, L, N), dtype),
        _normal(rng, (B, D, N)),
    )


def _value_and_grads(fn, args, seed):
    """(y, h) and the gradients of <y, gy> + <h, gh> for fixed random cotangents."""
    y, h = fn(*args)
    rng = np.random.default_rng(seed)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gh = rng.standard_normal(h.shape, dtype=np.float32)

    def loss(*a):
        y, h = fn(*a)
        return jnp.sum(y.astype(jnp.float32) * gy) + jnp.sum(h * gh)

    return (y, h), jax.grad(loss, argnums=tuple(range(len(args))))(*args)


# Interpret-mode kernels are compile-heavy on CPU: LLVM optimisation level 0 halves the compile
# time of these small test programs (the arithmetic is the same).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _both(kernel, oracle, args, seed):
    """Values and gradients of the kernel and of the oracle, in one compilation."""
    both = lambda args: (
        _value_and_grads(kernel, args, seed),
        _value_and_grads(oracle, args, seed),
    )
    return jax.jit(both).trace(args).lower().compile(FAST_COMPILE)(args)


def _assert_close(got, want, tol, what):
    """Max error relative to the largest |reference| entry, per output/gradient array."""
    for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        scale = max(float(np.abs(w).max()), 1e-30)
        err = float(np.abs(g - w).max()) / scale
        assert err <= tol, f"{what}[{i}]: max error {err:.2e} relative to max |ref| > {tol}"


def _ssd_oracle(x, dt, A, Bm, Cm, h0):
    return reference.ssd_sequential(x, dt, A, Bm, Cm, h0_BxHxPxN=h0)


def _selective_oracle(x, dt, A, Bm, Cm, h0):
    return reference.selective_scan_sequential(x, dt, A, Bm, Cm, h0_BxDxN=h0)


# Heads per group R -> (H, G); P = 3 and N = 5 (not powers of two: the GPU form pads).
_SSD_GROUPS = {1: (2, 2), 3: (6, 2), 8: (8, 1)}
_LENGTHS = lambda T: {"1": 1, "T-1": T - 1, "T": T, "T+1": T + 1, "3T+5": 3 * T + 5}
_GRID = list(itertools.product(["1", "T-1", "T", "T+1", "3T+5"], [1, 3, 8], ["f32", "bf16"]))
_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
# The default run: every length once, every group ratio once, bfloat16 once.
_DEFAULT = {("T+1", 3, "f32"), ("1", 1, "f32"), ("3T+5", 8, "f32"), ("T", 3, "bf16")}


def _grid(default):
    return [
        pytest.param(*case, marks=() if case in default else SLOW, id="-".join(map(str, case)))
        for case in _GRID
    ]


class TestScanKernel:
    INTERPRET = False
    TARGET = None  # None: the form of the platform the test runs on

    def setup_method(self):
        if not self.INTERPRET and _dispatch.platform() == "cpu":
            pytest.skip("native Pallas needs a GPU or TPU (the Interpret subclasses run on CPU)")

    def _target(self):
        return self.TARGET or ("tpu" if self.INTERPRET else _dispatch.platform())

    def _chunk(self):
        return 16 if self._target() == "gpu" else CHUNK

    def _check_ssd(self, B, L, H, P, G, N, dtype, blocks=None, seed=0):
        args = _ssd_inputs(seed, B, L, H, P, G, N, dtype)
        target, interpret = self._target(), self.INTERPRET
        blocks = blocks or pallas.SSDBlocks.default(B, L, H, P, G, N, self._chunk(), target)
        kernel = lambda *a: api._ssd_pallas(*a, blocks, target, interpret)
        got, want = _both(kernel, _ssd_oracle, args, seed + 1)
        _assert_close(got[0], want[0], TOL[dtype], f"ssd outputs {blocks}")
        _assert_close(got[1], want[1], TOL[dtype], f"ssd gradients {blocks}")

    def _check_selective(self, B, L, D, N, dtype, blocks=None, seed=0):
        args = _selective_inputs(seed, B, L, D, N, dtype)
        target, interpret = self._target(), self.INTERPRET
        blocks = blocks or pallas.SelectiveBlocks.default(B, L, D, N, target, dtype)
        kernel = lambda *a: api._selective_pallas(*a, blocks, target, interpret)
        got, want = _both(kernel, _selective_oracle, args, seed + 1)
        _assert_close(got[0], want[0], TOL[dtype], f"selective outputs {blocks}")
        _assert_close(got[1], want[1], TOL[dtype], f"selective gradients {blocks}")

    @pytest.mark.parametrize("length, group, dtype", _grid(_DEFAULT))
    def test_ssd(self, length, group, dtype):
        H, G = _SSD_GROUPS[group]
        L = _LENGTHS(self._chunk())[length]
        self._check_ssd(B=2, L=L, H=H, P=3, G=G, N=5, dtype=_DTYPES[dtype])

    @pytest.mark.parametrize(
        "length, dtype",
        [
            pytest.param(n, d, marks=() if (n, d) in {("T+1", "f32"), ("1", "bf16")} else SLOW)
            for n, d in itertools.product(["1", "T-1", "T", "T+1", "3T+5"], ["f32", "bf16"])
        ],
    )
    def test_selective(self, length, dtype):
        dtype = _DTYPES[dtype]
        blocks = pallas.SelectiveBlocks.default(2, 64, 6, 3, self._target(), dtype)
        K = blocks.sub  # positions between saved states
        L = _LENGTHS(K)[length]
        blocks = dataclasses.replace(blocks, chunk=2 * K)  # TPU: several sequential grid steps
        self._check_selective(B=2, L=L, D=6, N=3, dtype=dtype, blocks=blocks)

    @SLOW
    @pytest.mark.parametrize("heads", [1, 2, 4, 8])
    def test_ssd_head_blocks(self, heads):
        """Programs that take part of a group, one group, or several groups of heads."""
        b = pallas.SSDBlocks.default(1, 37, 8, 3, 4, 5, self._chunk(), self._target())
        b = dataclasses.replace(b, heads=heads)
        try:
            b.check(37, 8, 4, self._target())
        except ValueError as e:
            pytest.skip(str(e))
        self._check_ssd(B=1, L=37, H=8, P=3, G=4, N=5, dtype=jnp.float32, blocks=b)

    @SLOW
    @pytest.mark.parametrize("L", [63, 64, 65, 300])
    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
    def test_ssd_model_sizes(self, L, dtype):
        """Hardware-sized blocks: chunk 64, P = N = 16 (shape classes N = 1 and P = 16 too)."""
        target = self._target()
        blocks = pallas.SSDBlocks.default(2, L, 8, 16, 2, 16, 64, target)
        self._check_ssd(B=2, L=L, H=8, P=16, G=2, N=16, dtype=dtype, blocks=blocks)
        blocks = pallas.SSDBlocks.default(1, L, 4, 16, 1, 1, 64, target)
        self._check_ssd(B=1, L=L, H=4, P=16, G=1, N=1, dtype=dtype, blocks=blocks)

    @SLOW
    @pytest.mark.parametrize("L", [127, 128, 129])
    def test_selective_model_sizes(self, L):
        blocks = pallas.SelectiveBlocks.default(2, L, 130, 16, self._target())
        self._check_selective(B=2, L=L, D=130, N=16, dtype=jnp.float32, blocks=blocks)
        blocks = pallas.SelectiveBlocks.default(1, L, 64, 1, self._target())
        self._check_selective(B=1, L=L, D=64, N=1, dtype=jnp.float32, blocks=blocks)

    def test_dispatcher_pallas_matches_xla(self):
        x, dt, A, Bm, Cm, h0 = _ssd_inputs(7, 1, 5, 2, 3, 1, 4, jnp.float32)
        kw = dict(chunk_size=CHUNK, h0_BxHxPxN=h0)
        got = api.ssd(x, dt, A, Bm, Cm, implementation="pallas", interpret=self.INTERPRET, **kw)
        want = api.ssd(x, dt, A, Bm, Cm, implementation="xla", **kw)
        _assert_close(got, want, 1e-5, "ssd dispatch")


class TestScanKernelInterpret(TestScanKernel):
    INTERPRET = True


class TestScanKernelInterpretGpuForm(TestScanKernel):
    """The GPU (Triton) form — loops inside the program, power-of-two padding — interpreted."""

    INTERPRET = True
    TARGET = "gpu"
    test_dispatcher_pallas_matches_xla = None

    # The arithmetic is shared with the TPU form: the default run takes two cases.
    @pytest.mark.parametrize("length, group, dtype", _grid({("3T+5", 3, "f32")}))
    def test_ssd(self, length, group, dtype):
        super().test_ssd(length, group, dtype)

    @pytest.mark.parametrize(
        "length, dtype",
        [
            pytest.param(n, d, marks=() if (n, d) == ("T+1", "bf16") else SLOW)
            for n, d in itertools.product(["1", "T-1", "T", "T+1", "3T+5"], ["f32", "bf16"])
        ],
    )
    def test_selective(self, length, dtype):
        super().test_selective(length, dtype)


# ----------------------------------------------------------------------------- XLA forms


@pytest.mark.parametrize(
    "forward, L",
    [
        ("sequential", 21),
        pytest.param("chunked", 21, marks=SLOW),
        pytest.param("sequential", 1, marks=SLOW),
        pytest.param("chunked", 8, marks=SLOW),
        pytest.param("sequential", 9, marks=SLOW),
    ],
)
def test_xla_chunk_boundary_backward(forward, L):
    """Both scans' XLA forms (chunk-boundary backward) against the oracle's jax.grad."""
    args = _ssd_inputs(11, 1, L, 6, 3, 2, 5, jnp.float32)
    got, want = _both(lambda *a: xla.ssd(*a, 8, forward), _ssd_oracle, args, 12)
    _assert_close(got, want, 1e-5, f"ssd xla {forward}")
    args = _selective_inputs(13, 2, L, 5, 3, jnp.float32)
    fn = lambda *a: xla.selective_scan(*a, 8, forward)
    got, want = _both(fn, _selective_oracle, args, 14)
    _assert_close(got, want, 1e-5, f"selective xla {forward}")


@pytest.mark.parametrize("kernel", ["ssd", "selective_scan"])
def test_xla_backward_keeps_only_chunk_start_states(kernel):
    """The residuals of the XLA backward: the inputs and one state per chunk, no B·L·state."""
    B, L, T = 1, 64, 16
    if kernel == "ssd":
        H, P, G, N = 2, 4, 1, 8
        shapes = [(B, L, H, P), (B, L, H), (H,), (B, L, G, N), (B, L, G, N), (B, H, P, N)]
        fwd, state = xla._ssd_fwd, (B, H, P, N)
    else:
        D, N = 6, 8
        shapes = [(B, L, D), (B, L, D), (D, N), (B, L, N), (B, L, N), (B, D, N)]
        fwd, state = xla._selective_fwd, (B, D, N)
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    for forward in ("sequential", "chunked"):
        _, residuals = jax.eval_shape(lambda *a, f=forward: fwd(*a, T, f), *args)
        states = residuals[-1]
        assert states.shape == (L // T, *state)
        inputs = sum(a.size for a in args)
        assert sum(r.size for r in residuals) == inputs + states.size


def test_auto_falls_back_once_for_unsupported_dtype(caplog, monkeypatch):
    monkeypatch.setattr(_dispatch, "platform", lambda: "tpu")
    _dispatch._warn_once.cache_clear()
    x, dt, A, Bm, Cm, _ = _ssd_inputs(3, 1, 4, 2, 2, 1, 3, jnp.float16)
    with caplog.at_level("WARNING", logger="kernels"):
        for _ in range(2):
            y, _ = api.ssd(x, dt, A, Bm, Cm, chunk_size=CHUNK)
    assert y.dtype == jnp.float16
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 2 - 1
    assert "float16" in caplog.records[0].message
    with pytest.raises(ValueError, match="float16"):
        api.ssd(x, dt, A, Bm, Cm, implementation="pallas")


def test_blocks_that_a_target_cannot_take_are_refused():
    shapes = [(1, 40, 4, 2), (1, 40, 4), (4,), (1, 40, 2, 3), (1, 40, 2, 3)]
    x, dt, A, Bm, Cm = (np.zeros(s, np.float32) for s in shapes)  # refused before any work
    bad = pallas.SSDBlocks(chunk=12, heads=3)
    with pytest.raises(ValueError, match="heads=3"):
        api.ssd(x, dt, A, Bm, Cm, implementation="pallas", interpret=True, blocks=bad)
    with pytest.raises(TypeError, match="SSDBlocks"):
        api.ssd(x, dt, A, Bm, Cm, blocks=(8, 2))


@pytest.mark.parametrize("kernel", ["selective_scan", "ssd"])
def test_cpu_gradient_memory_is_far_below_full_residuals(kernel):
    """Compiled memory of the CPU gradient ("auto") at B·L·state = 8.4M elements: the
    temporaries stay under a quarter of what B·L·state float32 residuals would take."""
    B, L = 1, 4096
    if kernel == "selective_scan":
        D, N = 128, 16
        shapes, state = [(B, L, D), (B, L, D), (D, N), (B, L, N), (B, L, N)], D * N
        fn = api.selective_scan
    else:
        H, P, G, N = 4, 32, 1, 16
        shapes, state = [(B, L, H, P), (B, L, H), (H,), (B, L, G, N), (B, L, G, N)], H * P * N
        fn = functools.partial(api.ssd, chunk_size=64)

    def loss(*a):
        y, h = fn(*a)
        return jnp.sum(y) + jnp.sum(h)

    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    memory = grad.trace(*args).lower().compile().memory_analysis()
    assert memory.temp_size_in_bytes < B * L * state * 4 / 4, memory.temp_size_in_bytes
