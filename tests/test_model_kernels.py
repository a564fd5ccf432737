"""Models give the same numbers through the XLA path and the Pallas kernels (interpret mode on
CPU; the native kernels on a GPU or TPU)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import _dispatch
from l2m_jax import models

INTERPRET = _dispatch.platform() == "cpu"

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # see tests/test_kernels_scan.py


def _rel_err(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)


@pytest.mark.parametrize(
    "name, grads",
    [
        ("mamba2-tiny", True),
        ("mamba-tiny", False),
        pytest.param("mamba-tiny", True, marks=pytest.mark.slow),
    ],
)
def test_ssm_forward_and_gradients_match(name, grads):
    """Whole-sequence logits and parameter gradients of the NLL: xla vs pallas (interpret)."""
    cfg_xla = models.preset(name, implementation="xla")
    cfg_pallas = dataclasses.replace(cfg_xla, implementation="pallas", interpret=INTERPRET)
    params = models.init(cfg_xla, jax.random.key(0))
    # 21 positions: more than one SSD chunk (mamba2-tiny has chunk_size 16), not a multiple.
    tokens = jax.random.randint(jax.random.key(1), (2, 21), 0, cfg_xla.vocab_size)

    def loss(params, cfg):
        logits = models.apply(cfg, params, tokens[:, :-1])
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)), logits

    def both(params):
        if not grads:
            return [({}, loss(params, cfg)[1]) for cfg in (cfg_xla, cfg_pallas)]
        grad = jax.grad(loss, has_aux=True)
        return [grad(params, cfg) for cfg in (cfg_xla, cfg_pallas)]

    compiled = jax.jit(both).trace(params).lower().compile(FAST_COMPILE)
    (g_x, logits_x), (g_p, logits_p) = compiled(params)
    assert _rel_err(logits_p, logits_x) <= 1e-5
    for path, a in jax.tree_util.tree_leaves_with_path(g_p):
        b = _get(g_x, path)
        assert _rel_err(a, b) <= 1e-5, (jax.tree_util.keystr(path), _rel_err(a, b))


def _get(tree, path):
    for key in path:
        tree = tree[key.key if hasattr(key, "key") else key.idx]
    return tree


@pytest.mark.parametrize(
    "name", ["llama-tiny", pytest.param("mamba2-tiny", marks=pytest.mark.slow)]
)
def test_decoding_matches(name):
    """Prefill then token-by-token decoding (KV cache / recurrent state): xla vs pallas."""
    cfg_xla = models.preset(name, implementation="xla")
    cfg_pallas = dataclasses.replace(cfg_xla, implementation="pallas", interpret=INTERPRET)
    params = models.init(cfg_xla, jax.random.key(2))
    tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, cfg_xla.vocab_size)

    def run(params):
        outs = []
        for cfg in (cfg_xla, cfg_pallas):
            cache = models.init_cache(cfg, 2, 16)
            logits, cache = models.prefill(cfg, params, tokens[:, :9], cache)
            steps = [logits[:, -1]]
            for t in range(9, 12):
                out, cache = models.decode_step(cfg, params, tokens[:, t], cache)
                steps.append(out)
            outs.append(jnp.stack(steps, 1))
        return outs

    got_xla, got_pallas = jax.jit(run).trace(params).lower().compile(FAST_COMPILE)(params)
    assert np.isfinite(np.asarray(got_pallas)).all()
    assert _rel_err(got_pallas, got_xla) <= 1e-5
