"""Flax models (NNX, and Linen with its variables) as the estimators' density model and as the
trainer's model, through `models.flax_adapter`.

References: a Markov chain's exact log-probs (a Flax bigram table holding them must give the
same bipartite estimates as the chain's own logprob_fn), and a plain optax loop on the same
batches (the trainer must end at the same params, and resume them from its checkpoint).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx

from l2m_jax import train
from l2m_jax.information import bipartite_mi
from l2m_jax.models import flax_adapter
from l2m_jax.sources import markov_chain

V = 12
SPLITS = [2, 4, 8]


class LinenBigram(linen.Module):
    """logits[t] = table[token t]; the BOS row (id V) is the first token's distribution."""

    @linen.compact
    def __call__(self, tokens_BxT):
        table = self.param("log_table", linen.initializers.zeros, (V + 1, V))
        return table[tokens_BxT]


class NNXBigram(nnx.Module):
    def __init__(self, table):
        self.log_table = nnx.Param(table)

    def __call__(self, tokens_BxT):
        return self.log_table[...][tokens_BxT]


@pytest.fixture(scope="module")
def chain():
    src = markov_chain(V, seed=3)
    table = np.concatenate([np.log(src.transition), np.log(src.stationary)[None]]).astype(
        np.float32
    )
    docs = np.asarray(src.sample(jax.random.key(0), 64, 16))
    exact = bipartite_mi(src.logprob_fn, src.params, docs, SPLITS, bootstrap=50, progress=False)
    return table, docs, exact


def _same_estimates(result, exact):
    for name in ("direct", "direct_uncorrected", "vclub"):
        np.testing.assert_allclose(getattr(result, name), getattr(exact, name), atol=2e-5)
    np.testing.assert_allclose(result.direct_stderr, exact.direct_stderr, rtol=1e-3)


def test_a_linen_module_is_the_density_estimator(chain):
    table, docs, exact = chain
    module = LinenBigram()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    assert variables["params"]["log_table"].shape == table.shape
    variables = {"params": {"log_table": jnp.asarray(table)}}
    model = flax_adapter.from_linen(module, variables, bos_id=V)
    result = bipartite_mi(
        model.logprob_fn, model.params, docs, SPLITS, bootstrap=50, progress=False
    )
    _same_estimates(result, exact)
    assert model.merge(model.params)["params"]["log_table"] is model.params["log_table"]


def test_an_nnx_module_is_the_density_estimator(chain):
    table, docs, exact = chain
    model = flax_adapter.from_nnx(NNXBigram(jnp.asarray(table)), bos_id=V)
    result = bipartite_mi(
        model.logprob_fn, model.params, docs, SPLITS, bootstrap=50, progress=False
    )
    _same_estimates(result, exact)


class TinyLM(nnx.Module):
    """Embedding, one causal mixing step (the previous position), a GELU MLP, logits."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(V + 1, 16, rngs=rngs)
        self.mix = nnx.Linear(32, 16, rngs=rngs)
        self.out = nnx.Linear(16, V + 1, rngs=rngs)

    def __call__(self, tokens_BxT):
        x = self.embed(tokens_BxT)
        prev = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
        return self.out(jax.nn.gelu(self.mix(jnp.concatenate([x, prev], axis=-1))))


def test_an_nnx_module_trains_as_a_plain_optax_loop_does_and_resumes(tmp_path):
    src = markov_chain(V, seed=1)
    data = np.asarray(src.sample(jax.random.key(1), 8 * 7, 9), np.int32)
    with_bos = np.concatenate([np.full((len(data), 1), V, np.int32), data], axis=1)
    batches = lambda step, batch: with_bos[step * batch : (step + 1) * batch]
    model = flax_adapter.from_nnx(TinyLM(nnx.Rngs(0)))
    task = train.TokenTask(
        apply_fn=model.apply_fn, batches=batches, seq_len=9, eval_data=with_bos[-8:]
    )
    config = train.TrainConfig(
        steps=4,
        batch_size=8,
        learning_rate=1e-2,
        warmup_steps=2,
        eval_every=4,
        eval_size=8,
        checkpoint_every=4,
        log_every=1,
    )
    result = train.fit(task, model.params, config, out_dir=tmp_path / "run", progress=False)

    optimizer = train.make_optimizer(config)
    params, opt_state = model.params, optimizer.init(model.params)

    def loss(p, x):
        return train.token_nll(model.apply_fn(p, x[:, :-1]), x[:, 1:]).mean()

    @jax.jit
    def step_fn(params, opt_state, x):
        updates, opt_state = optimizer.update(jax.grad(loss)(params, x), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for step in range(config.steps):
        params, opt_state = step_fn(params, opt_state, jnp.asarray(batches(step, 8)))
    got, want = jax.tree.leaves(result.state.params), jax.tree.leaves(params)
    assert len(got) == len(want) == 5  # embedding, 2 x (kernel, bias)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert result.history[-1]["loss"] < result.history[0]["loss"]

    resumed = train.fit(
        task, model.params, config, out_dir=tmp_path / "run", resume=True, progress=False
    )
    for a, b in zip(jax.tree.leaves(resumed.state.params), got, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    trained = model.merge(resumed.state.params)  # the module itself, with the trained weights
    x = jnp.asarray(with_bos[:2])
    want = model.apply_fn(resumed.state.params, x)
    np.testing.assert_array_equal(np.asarray(trained(x)), np.asarray(want))


def test_bad_input_names_the_fix():
    with pytest.raises(TypeError, match="from_linen"):
        flax_adapter.from_nnx(LinenBigram())
    with pytest.raises(TypeError, match="from_nnx"):
        flax_adapter.from_linen(NNXBigram(jnp.zeros((V + 1, V))), {"params": {}})
    with pytest.raises(ValueError, match="'params' collection"):
        flax_adapter.from_linen(LinenBigram(), {"batch_stats": {}})
    with pytest.raises(ValueError, match="bos_id"):
        flax_adapter.from_nnx(NNXBigram(jnp.zeros((V + 1, V))), bos_id=-1)
