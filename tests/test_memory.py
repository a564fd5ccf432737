"""Long-context training memory: no L×L (or L×V) array anywhere in a training step, compiled
memory that grows linearly with L, and the targets at L = 16 384 (under -m slow)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from benchmarks import memory
from l2m_jax import models, train

GiB = 1024**3


def _avals(jaxpr):
    """Every array type in `jaxpr` and in the jaxprs nested in its equations (scan, cond,
    while, pjit, remat, custom_vjp/custom_jvp, pallas_call bodies...)."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    for v in (*jaxpr.invars, *jaxpr.constvars, *jaxpr.outvars):
        if hasattr(v, "aval"):
            yield v.aval
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield v.aval
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
                    yield from _avals(sub)


def _wide_arrays(fn, *args, length):
    """Shapes in the jaxpr of fn(*args) with two or more axes of size >= length."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    return {
        tuple(a.shape)
        for a in _avals(jaxpr)
        if sum(d >= length for d in getattr(a, "shape", ())) >= 2
    }


def _training_step(name, L, form):
    config = memory.model_config(name, L, form)
    params = memory.param_shapes(config)
    step = jax.value_and_grad(memory.loss_fn(config, form))
    return step, params, memory.batch_shape(config, 1, L)


@pytest.mark.parametrize(
    "name", ["gpt2", pytest.param("mamba-130m", marks=pytest.mark.slow), "mamba2-130m"]
)
def test_no_array_with_two_axes_of_length_L_in_a_training_step(name):
    """make_jaxpr of value_and_grad of the public loss at L = 4096 (shapes only, nothing runs):
    the new form has no [L, L] scores and no [L, V] logits in any sub-jaxpr; the old form does
    (the walk can find them)."""
    L = 4096
    step, params, batch = _training_step(name, L, "new")
    assert _wide_arrays(step, params, batch, length=L) == set()
    old = _wide_arrays(*_training_step(name, L, "old"), length=L)
    assert (1, L, models.preset(name).vocab_size) in old  # the full logits


def _small_gpt2(L):
    """GPT-2's vocabulary, one thin layer: cheap to compile."""
    config = dataclasses.replace(
        models.preset("gpt2"), d_model=64, n_layers=1, n_heads=2, remat=True, max_positions=L
    )
    params = jax.eval_shape(functools.partial(models.init, config), jax.random.key(0))
    step = jax.jit(jax.value_and_grad(memory.loss_fn(config, "new")))
    stats = step.lower(params, jax.ShapeDtypeStruct((1, L), jnp.int32)).compile().memory_analysis()
    return stats.temp_size_in_bytes


def test_compiled_memory_grows_linearly_at_a_moderate_length():
    """Temp bytes of one training step (activations, logits, scores) of a thin model with
    GPT-2's vocabulary: 4x the length gives at most 4.5x (the old form's full logits alone,
    [1024, 50257] float32, are 0.2 GB; its step needs about 10x the new one's temp there, see
    `python -m benchmarks.memory`)."""
    new_256, new_1024 = _small_gpt2(256), _small_gpt2(1024)
    assert new_1024 <= 4.5 * new_256, (new_256, new_1024)
    # one chunk of logits (333 positions x V), its softmax and gradient bound what is left
    assert new_1024 <= 0.25 * GiB, new_1024 / GiB


def test_token_task_trains_through_the_fused_head():
    """TokenTask(logprob_fn=models.token_logprobs) gives the per-token NLL of the full-logits
    path (apply_fn), and needs exactly one of the two."""
    config = models.preset("gpt2-tiny", max_positions=16)
    params = jax.jit(models.init, static_argnums=0)(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, config.vocab_size, jnp.int32)
    common = dict(batches=lambda step, batch: None, seq_len=16, eval_data=np.asarray(tokens))
    fused = train.TokenTask(logprob_fn=functools.partial(models.token_logprobs, config), **common)
    full = train.TokenTask(apply_fn=functools.partial(models.apply, config), **common)

    nll = jax.jit(lambda p: [task.per_token(p, tokens)["nll"] for task in (fused, full)])
    nll_new, nll_old = nll(params)  # the gradients: test_models' new-vs-old tests
    np.testing.assert_allclose(nll_new, nll_old, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        train.TokenTask(**common)


# Targets of issue 10 (compiled memory of one step, batch 1, remat, float32).
TARGETS_GIB = {"gpt2": 8.0, "mamba-130m": 6.0, "mamba2-130m": 6.0}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS_GIB))
def test_memory_targets_at_16384(name):
    """argument + output + temp of value_and_grad(loss) through the public API: within the
    target at L = 16 384, and at most 4.5x the L = 4096 value (linear)."""
    at_4096 = memory.step_memory(name, 4096, "new")["total_bytes"]
    at_16384 = memory.step_memory(name, 16384, "new")["total_bytes"]
    assert at_16384 <= TARGETS_GIB[name] * GiB, at_16384 / GiB
    assert at_16384 <= 4.5 * at_4096, at_16384 / at_4096
