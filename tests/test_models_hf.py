"""Our models compute what the Hugging Face PyTorch implementations compute, on the same
weights (optional: needs the `bench` extra, torch + transformers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2m_jax import models

pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks.models import hf_logits, hf_model

CONFIGS = {
    "gpt2": models.TransformerConfig(
        style="gpt2", vocab_size=97, d_model=64, n_layers=2, n_heads=4, max_positions=64
    ),
    # grouped-query attention and SmolLM2's rotary base, half-split rotary pairs
    "llama": models.TransformerConfig(
        style="llama",
        vocab_size=97,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
        rope_theta=100_000.0,
    ),
    "mamba": models.MambaConfig(vocab_size=97, d_model=32, n_layers=2, d_state=8),
    "mamba2": models.Mamba2Config(
        vocab_size=97, d_model=32, n_layers=2, d_state=8, head_dim=8, n_groups=2, chunk_size=16
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_hugging_face(name):
    config = CONFIGS[name]
    params = models.init(config, jax.random.key(0))
    params["embed"]["tokens"] = jax.random.normal(
        jax.random.key(1), params["embed"]["tokens"].shape
    )  # O(1) logits
    tokens = jax.random.randint(jax.random.key(2), (2, 40), 0, config.vocab_size, jnp.int32)
    ours = np.asarray(jax.jit(lambda p, t: models.apply(config, p, t))(params, tokens))
    theirs = hf_logits(hf_model(config, params), tokens)
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5)
