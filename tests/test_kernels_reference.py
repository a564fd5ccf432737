"""The plain-JAX forms agree with the sequential oracle and with NumPy; the dispatchers check
their arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import _dispatch, decode_attention, scan
from kernels.decode_attention.reference import append_kv, decode_attention_reference
from kernels.scan import reference


def _selective_inputs(key, B=2, L=37, D=5, N=3):
    k = jax.random.split(key, 6)
    return (
        jax.random.normal(k[0], (B, L, D)),
        jax.nn.softplus(jax.random.normal(k[1], (B, L, D))),
        -jnp.exp(jax.random.normal(k[2], (D, N))),
        jax.random.normal(k[3], (B, L, N)),
        jax.random.normal(k[4], (B, L, N)),
        jax.random.normal(k[5], (B, D, N)),
    )


def _ssd_inputs(key, B=2, L=37, H=4, P=3, G=2, N=5):
    k = jax.random.split(key, 6)
    return (
        jax.random.normal(k[0], (B, L, H, P)),
        jax.nn.softplus(jax.random.normal(k[1], (B, L, H))),
        -jnp.exp(jax.random.normal(k[2], (H,))),
        jax.random.normal(k[3], (B, L, G, N)),
        jax.random.normal(k[4], (B, L, G, N)),
        jax.random.normal(k[5], (B, H, P, N)),
    )


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_selective_scan_numpy_loop():
    x, dt, A, Bm, Cm, h0 = (np.asarray(a, np.float64) for a in _selective_inputs(jax.random.key(0)))
    h = h0.copy()
    ys = []
    for t in range(x.shape[1]):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None]
        ys.append(np.einsum("bdn,bn->bd", h, Cm[:, t]))
    y_ref = np.stack(ys, 1)
    y, h_out = reference.selective_scan_sequential(
        *(jnp.asarray(a, jnp.float32) for a in (x, dt, A, Bm, Cm)), h0_BxDxN=jnp.asarray(h0)
    )
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
    np.testing.assert_allclose(h_out, h, rtol=1e-5, atol=1e-5 * np.abs(h).max())


@pytest.mark.parametrize("form", ["associative", "chunked"])
def test_selective_scan_forms_match_oracle(form):
    x, dt, A, Bm, Cm, h0 = _selective_inputs(jax.random.key(1))
    fn = {
        "associative": reference.selective_scan_associative,
        "chunked": lambda *a, **k: reference.selective_scan_chunked(*a, chunk_size=8, **k),
    }[form]
    y0, h_0 = reference.selective_scan_sequential(x, dt, A, Bm, Cm, h0_BxDxN=h0)
    y, h = fn(x, dt, A, Bm, Cm, h0_BxDxN=h0)
    assert _rel(y, y0) < 1e-5 and _rel(h, h_0) < 1e-5


@pytest.mark.parametrize("chunk_size", [8, pytest.param(64, marks=pytest.mark.slow)])
def test_ssd_chunked_matches_oracle(chunk_size):
    x, dt, A, Bm, Cm, h0 = _ssd_inputs(jax.random.key(2))
    y0, h_0 = reference.ssd_sequential(x, dt, A, Bm, Cm, h0_BxHxPxN=h0)
    y, h = reference.ssd_chunked(x, dt, A, Bm, Cm, chunk_size=chunk_size, h0_BxHxPxN=h0)
    assert _rel(y, y0) < 1e-5 and _rel(h, h_0) < 1e-5


def test_ssd_associative_matches_oracle():
    x, dt, A, Bm, Cm, h0 = _ssd_inputs(jax.random.key(7))
    y0, h_0 = reference.ssd_sequential(x, dt, A, Bm, Cm, h0_BxHxPxN=h0)
    y, h = reference.ssd_associative(x, dt, A, Bm, Cm, h0_BxHxPxN=h0)
    assert _rel(y, y0) < 1e-5 and _rel(h, h_0) < 1e-5


@pytest.mark.slow
def test_ssd_is_selective_scan_with_scalar_decay():
    """SSD with P = 1 and one group is the Mamba-1 recurrence over D = H channels, A constant
    over N."""
    x, dt, A, Bm, Cm, _ = _ssd_inputs(jax.random.key(3), H=3, P=1, G=1, N=4)
    y_ssd, h_ssd = reference.ssd_sequential(x, dt, A, Bm, Cm)
    y, h = reference.selective_scan_sequential(
        x[..., 0], dt, jnp.repeat(A[:, None], 4, axis=1), Bm[:, :, 0], Cm[:, :, 0]
    )
    assert _rel(y, y_ssd[..., 0]) < 1e-6 and _rel(h, h_ssd[:, :, 0]) < 1e-6


def test_decode_reference_matches_softmax_and_ignores_poison():
    B, H, K, S, E = 3, 6, 2, 16, 8
    k = jax.random.split(jax.random.key(4), 3)
    q = jax.random.normal(k[0], (B, H, E))
    kc = jax.random.normal(k[1], (B, K, S, E))
    vc = jax.random.normal(k[2], (B, K, S, E))
    lengths = jnp.array([1, 9, 16], jnp.int32)
    poisoned = jnp.arange(S)[None, None, :, None] >= lengths[:, None, None, None]
    o = decode_attention_reference(
        q, jnp.where(poisoned, jnp.nan, kc), jnp.where(poisoned, jnp.nan, vc), lengths, scale=0.3
    )
    for b in range(B):
        n = int(lengths[b])
        kk = np.repeat(np.asarray(kc[b, :, :n]), H // K, axis=0)  # [H, n, E]
        vv = np.repeat(np.asarray(vc[b, :, :n]), H // K, axis=0)
        s = np.einsum("he,hse->hs", np.asarray(q[b], np.float64), kk) * 0.3
        p = np.exp(s - s.max(-1, keepdims=True))
        want = np.einsum("hs,hse->he", p / p.sum(-1, keepdims=True), vv)
        np.testing.assert_allclose(o[b], want, rtol=1e-5, atol=1e-6)


def test_append_kv_writes_at_length_and_drops_overflow():
    B, K, S, E = 3, 2, 4, 5
    kc = jnp.zeros((B, K, S, E))
    new = jnp.arange(B * K * E, dtype=jnp.float32).reshape(B, K, E) + 1
    lengths = jnp.array([0, 3, 4], jnp.int32)
    k2, v2 = jax.jit(append_kv, donate_argnums=(0, 1))(kc, kc + 0, new, -new, lengths)
    np.testing.assert_array_equal(k2[0, :, 0], new[0])
    np.testing.assert_array_equal(v2[1, :, 3], -new[1])
    assert float(jnp.abs(k2[2]).sum()) == 0.0  # row 4 is beyond capacity: dropped
    assert float(jnp.abs(k2[0, :, 1:]).sum()) == 0.0 and float(jnp.abs(k2[1, :, :3]).sum()) == 0.0


def test_dispatchers_reject_bad_arguments():
    x, dt, A, Bm, Cm, _ = _selective_inputs(jax.random.key(5))
    with pytest.raises(ValueError, match="A_DxN"):
        scan.selective_scan(x, dt, A[:2], Bm, Cm)
    with pytest.raises(ValueError, match="implementation"):
        scan.selective_scan(x, dt, A, Bm, Cm, implementation="cuda")
    if _dispatch.platform() == "cpu":
        with pytest.raises(ValueError, match="interpret=True"):
            scan.selective_scan(x, dt, A, Bm, Cm, implementation="pallas")
    x, dt, A, Bm, Cm, _ = _ssd_inputs(jax.random.key(6), H=4, G=3)
    with pytest.raises(ValueError, match="G=3"):
        scan.ssd(x, dt, A, Bm, Cm)
    q = jnp.zeros((2, 3, 4))
    cache = jnp.zeros((2, 2, 8, 4))
    with pytest.raises(ValueError, match="divide"):
        decode_attention.decode_attention(q, cache, cache, jnp.ones(2, jnp.int32))
    with pytest.raises(ValueError, match="lengths_B"):
        decode_attention.decode_attention(q[:, :2], cache, cache, jnp.ones(2))
