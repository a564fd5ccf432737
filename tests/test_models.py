"""Models: generation equals training, recurrent SSM equals parallel SSM equals a sequential
reference, exact causality, preset sizes, and clear errors for bad configs and inputs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kernels.attention import api as attention_api
from kernels.scan import api as scan_api
from l2m_jax import models
from l2m_jax.models import heads, ssm

# Small models of every architecture. Mamba-2 uses chunks of 4 so that every length below
# crosses chunk boundaries (prefill 6 = 4 + 2, then 7 decoded steps).
CONFIGS = {
    "gpt2": models.TransformerConfig(
        style="gpt2", vocab_size=40, d_model=32, n_layers=2, n_heads=4, max_positions=32
    ),
    "llama": models.TransformerConfig(
        style="llama", vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48
    ),
    "mamba": models.MambaConfig(vocab_size=40, d_model=16, n_layers=2, d_state=4, dt_rank=3),
    "mamba2": models.Mamba2Config(
        vocab_size=40, d_model=16, n_layers=2, d_state=4, head_dim=8, n_groups=2, chunk_size=4
    ),
}


def _gaussian(config):
    return dataclasses.replace(config, head="gaussian", channels=3, max_positions=32)


@functools.partial(jax.jit, static_argnums=(0, 1))  # one compile, not one per random draw
def _params(config, seed=0):
    params = models.init(config, jax.random.key(seed))
    if config.head == "tokens":  # O(1) logits, so 1e-5 is a tight tolerance
        params["embed"]["tokens"] = jax.random.normal(
            jax.random.key(seed + 1), params["embed"]["tokens"].shape
        )
    return params


def _inputs(config, key, B, L):
    if config.head == "tokens":
        return jax.random.randint(key, (B, L), 0, config.vocab_size, jnp.int32)
    return jax.random.normal(key, (B, L, config.channels), jnp.float32)


def _assert_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b)


B, L, L0, S = 2, 13, 6, 16


@pytest.fixture(scope="module", params=list(CONFIGS))
def forward(request):
    """(config, params, inputs, whole-sequence outputs, their Jacobian) for one architecture,
    with the Gaussian head (float inputs, so the Jacobian is defined); learned positions on."""
    config = _gaussian(CONFIGS[request.param])
    params = models.init(config, jax.random.key(0))
    inputs = _inputs(config, jax.random.key(2), B, L)

    def flat(x):
        pred = models.apply(config, params, x)
        out = jnp.concatenate([pred.mean, pred.std], axis=-1)  # [B, L, 2C]
        return out, pred

    # blockwise causal attention in blocks of 4 (4 + 4 + 4 + 1 for L = 13), so block
    # boundaries are crossed here as they are at 128 for long sequences
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention_api, "CPU_BLOCK", 4)
        jac, full = jax.jit(jax.jacrev(flat, has_aux=True))(inputs)  # one compile gives both
    return config, params, inputs, full, np.asarray(jac)  # jac [B, L, 2C, B, L, C]


def test_generation_equals_training(forward):
    config, params, inputs, full, _ = forward
    prefill = jax.jit(lambda p, x, c: models.prefill(config, p, x, c))
    decode = jax.jit(lambda p, x, c: models.decode_step(config, p, x, c), donate_argnums=2)
    out, cache = prefill(params, inputs[:, :L0], models.init_cache(config, B, S))
    outs = [out]
    for t in range(L0, L):
        out, cache = decode(params, inputs[:, t], cache)
        outs.append(jax.tree.map(lambda a: a[:, None], out))
    np.testing.assert_array_equal(cache.lengths, [L, L])
    _assert_close(jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outs), full)
    # a second prefill continues from the cache (positions L0.., states carried over)
    _, cache = prefill(params, inputs[:, :L0], models.init_cache(config, B, S))
    out2, cache = prefill(params, inputs[:, L0 : 2 * L0], cache)
    _assert_close(out2, jax.tree.map(lambda a: a[:, L0 : 2 * L0], full))


def test_causality_is_exact(forward):
    *_, jac = forward
    # output (b, t) against input (b2, s): exactly zero unless b2 == b and s <= t
    b, t, s = np.arange(B), np.arange(L), np.arange(L)
    allowed = (b[:, None, None, None] == b[None, None, :, None]) & (
        s[None, None, None, :] <= t[None, :, None, None]
    )  # [B, L, B, L]
    allowed = allowed[:, :, None, :, :, None]
    assert np.all(np.where(allowed, 0.0, jac) == 0.0)
    # and every output is reached by every input it may see (not trivially causal)
    reach = np.abs(np.where(allowed, jac, 0.0)).sum(axis=(2, 5))  # [B, L, B, L]
    for bb in range(B):
        assert np.all(reach[bb, :, bb][np.tril_indices(L)] > 0)


def test_data_parallel_forward_matches(forward):
    """The batch split over 2 devices (explicit mesh axes) gives the same outputs."""
    config, params, inputs, full, _ = forward
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    sharded = jax.device_put(
        inputs, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    )
    out = jax.jit(lambda p, x: models.apply(config, p, x))(params, sharded)
    assert out.mean.sharding.spec[0] == "data"
    _assert_close(out, full)


def test_remat_gives_the_same_gradients(forward):
    config, params, inputs, *_ = forward
    if not (isinstance(config, models.Mamba2Config) or getattr(config, "style", "") == "gpt2"):
        pytest.skip("remat wraps the same layer scan: one transformer and one SSM suffice")

    def grads(config):
        loss = lambda p: jnp.sum(models.apply(config, p, inputs).mean ** 2)
        return jax.jit(jax.grad(loss))(params)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        grads(dataclasses.replace(config, remat=True)),
        grads(config),
    )


def test_bfloat16_matmuls_stay_close_to_float32(forward):
    config, params, inputs, full, _ = forward
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    out = jax.jit(lambda p, x: models.apply(bf16, p, x))(params, inputs)
    assert out.mean.dtype == out.std.dtype == jnp.float32
    for got, want in zip(out, full, strict=True):
        err = float(jnp.max(jnp.abs(got - want)))
        scale = float(jnp.max(jnp.abs(want)))
        # bf16 operands (8-bit mantissa, relative rounding 2^-9 = 2e-3) through two layers and
        # the head: errors of about 1e-2 of the output scale; float32 would give about 1e-7
        assert 1e-5 * scale < err < 3e-2 * scale, (err, scale)


def _generate_and_apply(config):
    """Jitted (prefill L0 + two decode steps, apply over the same tokens, final cache)."""

    @jax.jit
    def run(params, tokens):
        cache = models.init_cache(config, B, S)
        out, cache = models.prefill(config, params, tokens[:, :L0], cache)
        steps = [out]
        for t in range(L0, L0 + 2):
            logits, cache = models.decode_step(config, params, tokens[:, t], cache)
            steps.append(logits[:, None])
        return jnp.concatenate(steps, axis=1), models.apply(config, params, tokens), cache

    return run


def test_generation_with_token_head():
    config = CONFIGS["gpt2"]
    params = _params(config)
    tokens = _inputs(config, jax.random.key(3), B, L0 + 2)
    generated, full, _ = _generate_and_apply(config)(params, tokens)
    _assert_close(generated, full)


def _mamba1_sequential(config, p, h_BxLxD):
    """Mamba-1 mixer written position by position from the equations (one lax.scan)."""
    Di, N, R, W = config.d_inner, config.d_state, config.time_step_rank, config.d_conv
    A = -jnp.exp(p["A_log"])

    def step(carry, h_BxD):
        window_BxWxI, s_BxIxN = carry
        xz = h_BxD @ p["in_proj"]
        x_BxI, z_BxI = xz[:, :Di], xz[:, Di:]
        window_BxWxI = jnp.concatenate([window_BxWxI[:, 1:], x_BxI[:, None]], axis=1)
        x_BxI = jax.nn.silu(jnp.einsum("bki,ki->bi", window_BxWxI, p["conv_w"]) + p["conv_b"][None])
        dbc = x_BxI @ p["x_proj"]
        dt_BxI = jax.nn.softplus(dbc[:, :R] @ p["dt_proj"] + p["dt_bias"][None])
        B_BxN, C_BxN = dbc[:, R : R + N], dbc[:, R + N :]
        s_BxIxN = jnp.exp(dt_BxI[:, :, None] * A[None]) * s_BxIxN + jnp.einsum(
            "bi,bn->bin", dt_BxI * x_BxI, B_BxN
        )
        y_BxI = jnp.einsum("bin,bn->bi", s_BxIxN, C_BxN) + p["D"][None] * x_BxI
        return (window_BxWxI, s_BxIxN), (y_BxI * jax.nn.silu(z_BxI)) @ p["out_proj"]

    B = h_BxLxD.shape[0]
    init = (jnp.zeros((B, W, Di)), jnp.zeros((B, Di, N)))
    _, y_LxBxD = lax.scan(step, init, jnp.swapaxes(h_BxLxD, 0, 1))
    return jnp.swapaxes(y_LxBxD, 0, 1)


def _mamba2_sequential(config, p, h_BxLxD):
    """Mamba-2 mixer written position by position from the equations (one lax.scan)."""
    Di, N, G, H, P = (
        config.d_inner,
        config.d_state,
        config.n_groups,
        config.n_heads,
        config.head_dim,
    )
    W, F = config.d_conv, config.conv_dim
    A_H = -jnp.exp(p["A_log"])

    def step(carry, h_BxD):
        window_BxWxF, s_BxHxPxN = carry
        proj = h_BxD @ p["in_proj"]
        z_BxI, xbc_BxF, dt_BxH = proj[:, :Di], proj[:, Di : Di + F], proj[:, Di + F :]
        window_BxWxF = jnp.concatenate([window_BxWxF[:, 1:], xbc_BxF[:, None]], axis=1)
        xbc = jax.nn.silu(jnp.einsum("bkf,kf->bf", window_BxWxF, p["conv_w"]) + p["conv_b"][None])
        b = h_BxD.shape[0]
        x_BxHxP = xbc[:, :Di].reshape(b, H, P)
        B_BxHxN = jnp.repeat(xbc[:, Di : Di + G * N].reshape(b, G, N), H // G, axis=1)
        C_BxHxN = jnp.repeat(xbc[:, Di + G * N :].reshape(b, G, N), H // G, axis=1)
        dt_BxH = jax.nn.softplus(dt_BxH + p["dt_bias"][None])
        s_BxHxPxN = jnp.exp(dt_BxH * A_H[None])[:, :, None, None] * s_BxHxPxN + jnp.einsum(
            "bhp,bhn->bhpn", dt_BxH[:, :, None] * x_BxHxP, B_BxHxN
        )
        y_BxHxP = jnp.einsum("bhpn,bhn->bhp", s_BxHxPxN, C_BxHxN) + p["D"][None, :, None] * x_BxHxP
        y_BxI = y_BxHxP.reshape(b, Di) * jax.nn.silu(z_BxI)
        y_BxGxI = y_BxI.reshape(b, G, Di // G)  # RMSNorm per group
        y_BxGxI = y_BxGxI * lax.rsqrt(jnp.mean(y_BxGxI**2, -1, keepdims=True) + config.norm_eps)
        y_BxI = y_BxGxI.reshape(b, Di)
        return (window_BxWxF, s_BxHxPxN), (y_BxI * p["gate_norm"][None]) @ p["out_proj"]

    B = h_BxLxD.shape[0]
    init = (jnp.zeros((B, W, F)), jnp.zeros((B, H, P, N)))
    _, y_LxBxD = lax.scan(step, init, jnp.swapaxes(h_BxLxD, 0, 1))
    return jnp.swapaxes(y_LxBxD, 0, 1)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_recurrent_equals_parallel_equals_sequential(name):
    config = CONFIGS[name]
    mixer, reference = {
        "mamba": (ssm._mamba1_mixer, _mamba1_sequential),
        "mamba2": (ssm._mamba2_mixer, _mamba2_sequential),
    }[name]
    layer = jax.tree.map(lambda a: a[0], models.init(config, jax.random.key(3))["layers"])
    B, L = 2, 11
    h_BxLxD = jax.random.normal(jax.random.key(4), (B, L, config.d_model))
    window = jnp.zeros((B, config.d_conv - 1, config.conv_dim))
    cache = models.init_cache(config, B, L)
    state = jax.tree.map(lambda a: a[0], cache.ssm)

    @jax.jit
    def parallel(layer, h):
        return mixer(config, layer, h, window, None, recurrent=False)

    @jax.jit
    def recurrent(layer, h):
        def step(carry, h_BxD):
            out, window, state = mixer(config, layer, h_BxD[:, None], *carry, recurrent=True)
            return (window, state), out[:, 0]

        (w, s), y = lax.scan(step, (window, state), jnp.swapaxes(h, 0, 1))
        return jnp.swapaxes(y, 0, 1), w, s

    y_par, w_par, s_par = parallel(layer, h_BxLxD)
    y_rec, w_rec, s_rec = recurrent(layer, h_BxLxD)
    y_ref = jax.jit(lambda p, h: reference(config, p, h))(layer, h_BxLxD)
    assert float(jnp.max(jnp.abs(y_ref))) > 0.05  # the comparison is not vacuous
    np.testing.assert_allclose(y_par, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_rec, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_par, s_rec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w_par, w_rec, rtol=0, atol=0)


def _mamba1_param_formula(c):
    Di, N, R, W, D = c.d_inner, c.d_state, c.time_step_rank, c.d_conv, c.d_model
    layer = D * 2 * Di + W * Di + Di + Di * (R + 2 * N) + R * Di + Di + Di * N + Di + Di * D + D
    return c.vocab_size * D + c.n_layers * layer + D


def _gpt2_param_formula(c):
    D, F, V = c.d_model, c.ff_dim, c.vocab_size
    layer = 4 * D * D + 4 * D + 2 * D * F + F + D + 4 * D
    return V * D + c.num_positions * D + c.n_layers * layer + 2 * D


def test_preset_parameter_counts():
    key = jax.random.key(0)
    for name, nominal in models.NOMINAL_PARAMS.items():
        config = models.preset(name)
        count = models.param_count(jax.eval_shape(lambda c=config: models.init(c, key)))
        if isinstance(config, models.MambaConfig):
            assert count == _mamba1_param_formula(config), name
        if isinstance(config, models.TransformerConfig) and config.style == "gpt2":
            assert count == _gpt2_param_formula(config), name
        assert abs(count / nominal - 1) < 0.05, (name, count)
    assert models.preset("gpt2").vocab_size == 50257
    assert models.preset("mamba-130m").vocab_size == 50280
    assert models.preset("mamba2-370m").vocab_size == 50280


def test_history_state_size_matches_the_cache():
    B = 2
    for config in CONFIGS.values():
        cache = models.init_cache(config, B, 16)
        if isinstance(config, models.TransformerConfig):
            for pos in (0, 1, 7, 16):
                size = models.history_state_size(config, pos)
                # keys and values of rows < pos in one layer of one sequence
                kv_rows = 2 * cache.k[0][0, :, :pos].size
                assert size.per_layer == kv_rows == 2 * config.kv_heads * config.head_dim * pos
                assert size.total == config.n_layers * size.per_layer
        else:
            sizes = {models.history_state_size(config, pos) for pos in (0, 1, 1000, 10**6)}
            assert len(sizes) == 1  # constant in the position
            (size,) = sizes
            assert size.total == (cache.conv.size + cache.ssm.size) // B
    mamba = CONFIGS["mamba"]
    assert models.history_state_size(mamba, 5).per_layer == mamba.d_inner * (mamba.d_state + 3)
    m2 = CONFIGS["mamba2"]
    assert models.history_state_size(m2, 5).per_layer == (
        m2.n_heads * m2.head_dim * m2.d_state + 3 * (m2.d_inner + 2 * m2.n_groups * m2.d_state)
    )
    with pytest.raises(ValueError, match="position"):
        models.history_state_size(mamba, -1)


def test_token_logprob_fn_scores_each_token_after_bos():
    config = dataclasses.replace(CONFIGS["llama"], bos_id=7)
    params = _params(config)
    tokens = jax.random.randint(jax.random.key(8), (2, 5), 0, config.vocab_size, jnp.int32)
    logp = jax.jit(models.token_logprob_fn(config))(params, tokens)
    assert logp.shape == (2, 5) and logp.dtype == jnp.float32
    # entry t = log softmax of the logits after BOS, tokens[:t], evaluated at tokens[t]
    with_bos = jnp.concatenate([jnp.full((2, 1), 7, jnp.int32), tokens], axis=1)
    logits = jax.jit(lambda p, x: models.apply(config, p, x))(params, with_bos)[:, :-1]
    want = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(logp, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="head='tokens'"):
        models.token_logprob_fn(_gaussian(CONFIGS["llama"]))


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="does not divide d_model"):
        models.TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads=3 does not divide n_heads"):
        models.TransformerConfig(d_model=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="state size"):
        models.MambaConfig(d_state=0)
    with pytest.raises(ValueError, match="state size"):
        models.Mamba2Config(d_state=0)
    with pytest.raises(ValueError, match="head_dim=24 does not divide"):
        models.Mamba2Config(d_model=16, head_dim=24)
    with pytest.raises(ValueError, match="n_groups=3"):
        models.Mamba2Config(d_model=16, head_dim=8, n_groups=3)
    with pytest.raises(ValueError, match="style"):
        models.TransformerConfig(style="bert")
    with pytest.raises(ValueError, match="unknown preset"):
        models.preset("gpt5")
    with pytest.raises(TypeError, match="fields"):
        models.preset("gpt2", width=3)
    with pytest.raises(TypeError, match="config must be"):
        models.init(object(), jax.random.key(0))


def test_bad_inputs_and_decoding_past_the_cache():
    config = CONFIGS["gpt2"]
    params = _params(config)
    tokens = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        models.apply(config, params, tokens.at[0, 1].set(40))
    with pytest.raises(TypeError, match="integer tokens"):
        models.apply(config, params, tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match="max_positions=32"):
        models.apply(config, params, jnp.zeros((1, 33), jnp.int32))
    cache = models.init_cache(config, 1, 4)
    with pytest.raises(ValueError, match="capacity 4"):
        models.prefill(config, params, jnp.zeros((1, 5), jnp.int32), cache)
    full = cache._replace(lengths=jnp.full((1,), 4, jnp.int32))
    with pytest.raises(ValueError, match="decoding past the cache capacity"):
        models.decode_step(config, params, jnp.zeros((1,), jnp.int32), full)
    # under jit the lengths are traced: a sequence past the capacity gets NaN, never garbage
    decode = jax.jit(lambda p, x, c: models.decode_step(config, p, x, c))
    logits, _ = decode(params, jnp.zeros((1,), jnp.int32), full)
    assert np.all(np.isnan(logits))
    ok, _ = decode(params, jnp.zeros((1,), jnp.int32), cache)
    assert np.all(np.isfinite(ok))
    with pytest.raises(ValueError, match="max_positions=32"):
        models.init_cache(config, 1, 64)
    with pytest.raises(ValueError, match="do not fit this config"):  # one layer short
        models.decode_step(config, params, tokens[:, 0], cache._replace(k=cache.k[:1]))
    with pytest.raises(ValueError, match="do not fit this config and a batch of 2"):
        models.prefill(config, params, jnp.zeros((2, 3), jnp.int32), cache)
    mamba = _gaussian(CONFIGS["mamba"])  # inputs are checked before the params are touched
    with pytest.raises(TypeError, match=r"\[B, L, C=3\]"):
        models.apply(mamba, None, jnp.zeros((1, 4, 2)))
    with pytest.raises(ValueError, match="decoding past the max_positions"):
        models.decode_step(
            mamba,
            None,
            jnp.zeros((1, 3)),
            models.init_cache(mamba, 1, 32)._replace(lengths=jnp.full((1,), 32, jnp.int32)),
        )


def test_gaussian_head_std_floor_and_initial_std():
    config = _gaussian(CONFIGS["mamba2"])
    params = heads.init(config, jax.random.key(9))
    x = jnp.ones((1, 2, config.d_model))
    # at initialisation the std is about 1 (the unit variance of the data)
    np.testing.assert_allclose(heads.output(config, params, x).std, 1.0, atol=0.1)
    params["head"]["b2"] = params["head"]["b2"].at[config.channels :].set(-1e4)
    np.testing.assert_allclose(heads.output(config, params, x).std, models.STD_FLOOR, rtol=1e-6)


# ----------------------------------------------------------------------------- O(L) paths
# The new paths (blockwise attention, the scans' chunk-boundary backward, fused token head)
# against the old ones (the quadratic reference attention, the sequential scans with full
# residuals, log-softmax of the full logits), outputs and parameter gradients. Attention
# blocks, selective-scan chunks and loss chunks of 8 positions, SSD chunks of 32 (batch B = 2).
NEW_OLD_BLOCK = 8


def _new_and_old(config, params, tokens_BxL1, bf16_too):
    inputs, targets = tokens_BxL1[:, :-1], tokens_BxL1[:, 1:]
    weights = jnp.linspace(0.5, 1.5, targets.size).reshape(targets.shape)  # not a plain mean
    old_config = config
    if isinstance(config, models.TransformerConfig):
        old_config = dataclasses.replace(config, implementation="reference")

    def new(params, config=config):
        logp = models.token_logprobs(config, params, inputs, targets, chunk_size=NEW_OLD_BLOCK)
        return jnp.sum(logp * weights), logp

    def old(params):
        logits = models.apply(old_config, params, inputs)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        return jnp.sum(logp * weights), logp

    def grad(f, params, new_form=True):  # traced here: the kernels' forms are chosen at trace time
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(attention_api, "CPU_BLOCK", NEW_OLD_BLOCK)
            if new_form:  # the chunk-boundary backward at any size (else lax.scan autodiff below)
                mp.setattr(scan_api, "_CPU_AUTODIFF_MAX", 0)
                mp.setattr(scan_api, "_CPU_SSD_AUTODIFF_MAX", 0)
                mp.setattr(scan_api, "_CPU_SELECTIVE_CHUNK", NEW_OLD_BLOCK)
            else:  # the sequential reference scans, differentiated with all their residuals
                mp.setattr(scan_api, "_CPU_AUTODIFF_MAX", float("inf"))
                mp.setattr(scan_api, "_CPU_SSD_AUTODIFF_MAX", float("inf"))
            return jax.grad(f, has_aux=True)(params)

    bf16 = functools.partial(new, config=dataclasses.replace(config, dtype="bfloat16"))
    both = lambda p: (grad(new, p), grad(old, p, False), grad(bf16, p) if bf16_too else None)
    return jax.jit(both)(params)


def _assert_new_equals_old(config, L, bf16_too=False):
    params = _params(config)
    tokens = _inputs(config, jax.random.key(L), B, L + 1)
    (g_new, lp_new), (g_old, lp_old), bf16 = _new_and_old(config, params, tokens, bf16_too)
    assert lp_new.shape == (B, L) and lp_new.dtype == jnp.float32
    scale = lambda a: max(1.0, float(jnp.max(jnp.abs(a))))
    assert float(jnp.max(jnp.abs(lp_new - lp_old))) <= 1e-5 * scale(lp_old)
    for path, a in jax.tree_util.tree_leaves_with_path(g_new):
        b = _leaf(g_old, path)
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * scale(b), jax.tree_util.keystr(path)
    if bf16_too:  # bf16 activations and operands, f32 statistics: ~1e-2 of the scale
        g_bf16, lp_bf16 = bf16
        assert float(jnp.max(jnp.abs(lp_bf16 - lp_old))) <= 3e-2 * scale(lp_old)
        for path, a in jax.tree_util.tree_leaves_with_path(g_bf16):
            b = _leaf(g_old, path)
            assert a.dtype == jnp.float32  # parameters (and their gradients) stay float32
            assert float(jnp.max(jnp.abs(a - b))) <= 3e-2 * scale(b), jax.tree_util.keystr(path)


def _leaf(tree, path):
    for key in path:
        tree = tree[key.key if hasattr(key, "key") else key.idx]
    return tree


def test_new_paths_equal_the_old_at_a_ragged_length():
    # llama (GQA, rotary): 21 positions = 2 blocks (attention) or chunks (loss) + 5. Every
    # architecture at every length, the scans' chunk-boundary backward and bf16: -m slow.
    _assert_new_equals_old(CONFIGS["llama"], 21)


@pytest.mark.slow
@pytest.mark.parametrize("L", [1, NEW_OLD_BLOCK - 1, NEW_OLD_BLOCK, NEW_OLD_BLOCK + 1, 37])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_new_paths_equal_the_old(name, L):
    """All four architectures at L = 1, block - 1, block, block + 1 and ragged; bf16 too."""
    _assert_new_equals_old(dataclasses.replace(CONFIGS[name], max_positions=64), L, True)


def test_fused_token_head_equals_the_full_logits():
    """heads.token_logprobs against log_softmax(heads.output) on hidden states: values and
    gradients (hidden states, unembedding), tied and untied, float32 (and bf16 tied) for 5
    (chunk + 1) and 11 (2 chunks + 3) positions in chunks of 4."""
    tied = CONFIGS["gpt2"]
    untied = dataclasses.replace(tied, tie_embeddings=False)
    params = dict(_params(tied))
    params["head"] = {"unembed": jnp.asarray(np.random.default_rng(3).standard_normal((32, 40)))}
    rng = np.random.default_rng(4)
    cases = [
        (jnp.asarray(rng.standard_normal((1, n, 32)), jnp.float32), jnp.asarray(t, jnp.int32))
        for n, t in ((5, rng.integers(0, 40, (1, 5))), (11, rng.integers(0, 40, (1, 11))))
    ]

    def fused(params, x, t, config):
        return jnp.sum(heads.token_logprobs(config, params, x, t, chunk_size=4) * (t + 1))

    def full(params, x, t, config):
        logp = jax.nn.log_softmax(heads.output(config, params, x))
        return jnp.sum(jnp.take_along_axis(logp, t[..., None], -1)[..., 0] * (t + 1))

    @jax.jit
    def compare(params):
        grad = lambda f, x, t, c: jax.value_and_grad(f, argnums=(0, 1))(params, x, t, c)
        bf16 = dataclasses.replace(tied, dtype="bfloat16")
        return [
            [
                (grad(fused, x, t, tied), grad(full, x, t, tied), 1e-5),
                (grad(fused, x, t, bf16), grad(full, x, t, tied), 3e-2),
                (grad(fused, x, t, untied), grad(full, x, t, untied), 1e-5),
            ]
            for x, t in cases
        ]

    for case in compare(params):
        for got, want, tol in case:
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                assert a.dtype == b.dtype == jnp.float32
                assert float(jnp.max(jnp.abs(a - b))) <= tol * max(1.0, float(jnp.max(abs(b))))


def test_prefill_masks_garbage_and_never_overwrites_valid_rows():
    config = CONFIGS["llama"]
    params = _params(config)
    tokens = _inputs(config, jax.random.key(5), B, S)
    full = jax.jit(lambda p, x: models.apply(config, p, x))(params, tokens)
    prefill = jax.jit(lambda p, x, c: models.prefill(config, p, x, c))  # blocks of 4 rows
    _, cache = prefill(params, tokens[:, :4], models.init_cache(config, B, S))
    # rows past the valid length hold NaN garbage (e.g. a reused cache): nothing leaks
    rows = (jnp.arange(S) >= 4)[None, None, :, None]
    poison = lambda c: jnp.where(rows, jnp.nan, c)
    cache = cache._replace(k=tuple(map(poison, cache.k)), v=tuple(map(poison, cache.v)))
    out, cache = prefill(params, tokens[:, 4:8], cache)
    _assert_close(out, full[:, 4:8])
    # under jit, a block past the capacity: that sequence gets NaN, its valid rows and the
    # other sequence are untouched (rows that do not fit are dropped, never clamped back)
    _, cache = prefill(params, tokens[:, 8:12], cache)
    cache = cache._replace(lengths=jnp.array([S - 2, 0], jnp.int32))
    out, after = prefill(params, tokens[:, :4], cache)
    assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1]))
    _assert_close(out[1], full[1, :4])
    for before_k, after_k in zip(cache.k, after.k, strict=True):
        np.testing.assert_array_equal(after_k[0, :, : S - 2], before_k[0, :, : S - 2])
    np.testing.assert_array_equal(after.lengths, [S + 2, 4])
    # concrete lengths raise instead
    with pytest.raises(ValueError, match="cache capacity"):
        models.prefill(config, params, tokens[:, :4], cache)


def test_bfloat16_generation_uses_the_dtype_of_apply():
    """prefill and decode run in bf16 like apply: bf16 KV cache, same numbers within bf16."""
    config = dataclasses.replace(CONFIGS["llama"], dtype="bfloat16")
    params = _params(config)
    tokens = _inputs(config, jax.random.key(6), B, L0 + 2)
    generated, full, cache = _generate_and_apply(config)(params, tokens)
    assert cache.k[0].dtype == jnp.bfloat16 and generated.dtype == jnp.float32
    # the same bf16 operands, summed in another order: bf16 rounding (2^-9) of O(1) logits
    np.testing.assert_allclose(generated, full, atol=3e-2 * float(jnp.max(jnp.abs(full))))
    with pytest.raises(ValueError, match=r"config\.dtype"):
        models.prefill(config, params, tokens[:, :2], models.init_cache(CONFIGS["llama"], B, S))
