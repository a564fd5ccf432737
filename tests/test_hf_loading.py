"""Hugging Face folders without torch: our weights written under Hugging Face's names (by
benchmarks.models.hf_state_dict) with the `safetensors` package, read back by `pretrained.load`;
sharded placement; bad input.

(Parity with transformers' own models, on checkpoints transformers writes, is in
tests/test_hf_checkpoints.py, `slow`.)"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from benchmarks.models import hf_state_dict
from l2m_jax import models
from l2m_jax.models import hf, pretrained
from l2m_jax.models.hf_safetensors import SafetensorsCheckpoint, SafetensorsFile

safetensors_numpy = pytest.importorskip("safetensors.numpy")

LLAMA = models.TransformerConfig(
    style="llama",
    vocab_size=256,
    d_model=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=128,
    rope_theta=10_000.0,
    norm_eps=1e-6,
    tie_embeddings=False,
)


def _llama_json(c: models.TransformerConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ff_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": 128,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _params(config, seed=0):
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: models.init(config, jax.random.key(0)))
    # O(1) weights everywhere (norm scales and biases too), so a wrong mapping shows
    return jax.tree.map(
        lambda a: (1.0 + 0.3 * rng.standard_normal(a.shape)).astype(np.float32), abstract
    )


def _apply(config, params, tokens):
    return jax.jit(lambda p, t: models.apply(config, p, t))(params, tokens)


def _write(folder, config, params, config_json, shard=None):
    folder.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(config, params)
    if not config.tie_embeddings:
        state["lm_head.weight"] = np.asarray(params["head"]["unembed"]).T
    state = {k: np.ascontiguousarray(v) for k, v in state.items()}  # save_file needs that
    (folder / "config.json").write_text(json.dumps(config_json))
    if shard is None:
        safetensors_numpy.save_file(state, folder / "model.safetensors")
        return state
    names = sorted(state)
    weight_map = {}
    for j in range(shard):
        part = names[j::shard]
        file = f"model-{j + 1:05d}-of-{shard:05d}.safetensors"
        safetensors_numpy.save_file({n: state[n] for n in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return state


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "llama"
    params = _params(LLAMA)
    _write(folder, LLAMA, params, _llama_json(LLAMA))
    return folder, params


TOKENS = np.random.default_rng(0).integers(0, 256, (8, 20)).astype(np.int32)


def test_a_llama_folder_loads_as_the_weights_it_was_written_from(llama_folder, tmp_path):
    folder, params = llama_folder
    model = pretrained.load(folder)
    assert _behaviour(model.config) == _behaviour(LLAMA) and model.config.bos_id == 1
    assert model.bos_id == 1 and "config.json bos_token_id = 1" in model.bos_source
    assert model.source.endswith("(LlamaForCausalLM)") and model.max_len == 128
    assert model.tokenizer is None  # the folder has no tokenizer.json
    got = model.logprob_fn(model.params, jnp.asarray(TOKENS))
    want = jax.jit(models.token_logprob_fn(model.config))(params, jnp.asarray(TOKENS))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # an index with shards gives the same weights
    _write(tmp_path / "sharded", LLAMA, params, _llama_json(LLAMA), shard=3)
    sharded = pretrained.load(tmp_path / "sharded")
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(model.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _behaviour(config) -> dict:
    """What a config computes: its fields with the style defaults resolved."""
    import dataclasses

    out = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("bos_id", "dtype")}
    if isinstance(config, models.TransformerConfig):
        for name in ("attn_bias", "attn_out_bias", "mlp_bias", "parallel_residual", "activation"):
            del out[name]
        out.update(
            d_head=config.head_dim,
            max_positions=config.num_positions,
            d_ff=config.ff_dim,
            n_kv_heads=config.kv_heads,
            biases=(config.has_attn_bias, config.has_attn_out_bias, config.has_mlp_bias),
            parallel=config.has_parallel_residual,
            activation=config.mlp_activation,
            rotary=config.rotary_size,
        )
    if isinstance(config, models.MambaConfig):
        out["dt_rank"] = config.time_step_rank
    return out


def test_sharded_placement_scores_like_one_device_and_splits_the_weights(llama_folder):
    folder, _ = llama_folder
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    whole = pretrained.load(folder)
    split = pretrained.load(folder, mesh=mesh)
    wq = split.params["layers"]["attn"]["wq"]
    assert wq.sharding.spec == PartitionSpec(None, None, "model")
    assert split.params["embed"]["tokens"].sharding.spec == PartitionSpec("model", None)
    device = jax.devices()[0]
    total = sum(a.nbytes for a in jax.tree.leaves(split.params))
    held = sum(
        s.data.nbytes
        for a in jax.tree.leaves(split.params)
        for s in a.addressable_shards
        if s.device == device
    )
    assert 0.25 <= held / total < 0.27, held / total  # norms are replicated
    tokens = jax.device_put(jnp.asarray(TOKENS), NamedSharding(mesh, PartitionSpec("data")))
    got = split.logprob_fn(split.params, tokens)
    want = whole.logprob_fn(whole.params, jnp.asarray(TOKENS))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not an axis"):
        pretrained.load(folder, mesh=mesh, model_axis="tensor")


def test_bfloat16_matrices_and_float32_vectors(llama_folder):
    folder, _ = llama_folder
    model = pretrained.load(folder, dtype="bfloat16")
    assert model.config.dtype == "bfloat16"
    assert model.params["layers"]["attn"]["wq"].dtype == jnp.bfloat16
    assert model.params["layers"]["attn_norm"]["scale"].dtype == jnp.float32
    fp32 = pretrained.load(folder)
    got = _apply(model.config, model.params, jnp.asarray(TOKENS))
    want = _apply(fp32.config, fp32.params, jnp.asarray(TOKENS))
    err = float(jnp.abs(got - want).max() / jnp.abs(want).max())
    assert err < 2e-2, err


def test_the_reader_matches_the_safetensors_package(tmp_path):
    from safetensors import safe_open

    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((5, 7)).astype(np.float32),
        "b": rng.standard_normal((3, 4, 2)).astype(np.float16),
        "c": np.arange(6, dtype=np.int64),
    }
    safetensors_numpy.save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "np"})
    ours = SafetensorsFile(tmp_path / "x.safetensors")
    assert ours.metadata == {"format": "np"} and sorted(ours.names) == ["a", "b", "c"]
    with safe_open(tmp_path / "x.safetensors", framework="np") as theirs:
        for name, index in (("a", (slice(1, 4), slice(2, 7))), ("b", (2,)), ("c", ())):
            want = theirs.get_slice(name)[index] if index else theirs.get_tensor(name)
            got = ours.read(name, index)
            assert got.dtype == tensors[name].dtype
            np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- bad input


def test_a_folder_without_config_json(tmp_path):
    with pytest.raises(ValueError, match=r"has no config\.json"):
        pretrained.load(tmp_path)


def test_an_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"})
    )
    with pytest.raises(ValueError, match=r"config\.json") as err:
        pretrained.load(tmp_path)
    message = str(err.value)
    assert "'BertForMaskedLM'" in message
    assert all(arch in message for arch in hf.ARCHITECTURES), message


def test_a_tensor_whose_shape_differs_from_the_config(llama_folder, tmp_path):
    _, params = llama_folder
    wrong = {**_llama_json(LLAMA), "intermediate_size": 96}
    _write(tmp_path, LLAMA, params, wrong)
    match = r"model.safetensors: tensor model.layers.0.mlp.down_proj.weight has shape \[64, 128\]"
    with pytest.raises(ValueError, match=match + r", but config.json implies \[64, 96\]"):
        pretrained.load(tmp_path)


def test_a_missing_shard_of_an_index(llama_folder, tmp_path):
    _, params = llama_folder
    _write(tmp_path, LLAMA, params, _llama_json(LLAMA), shard=3)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(
        ValueError, match=r"lists shard model-00002-of-00003\.safetensors, which is"
    ):
        pretrained.load(tmp_path)


def test_missing_unexpected_and_truncated_tensors_name_the_file(llama_folder, tmp_path):
    _, params = llama_folder
    state = _write(tmp_path, LLAMA, params, _llama_json(LLAMA))
    path = tmp_path / "model.safetensors"
    del state["model.norm.weight"]
    safetensors_numpy.save_file(state, path)
    with pytest.raises(ValueError, match=r"tensor model\.norm\.weight is missing"):
        pretrained.load(tmp_path)
    state["model.norm.weight"] = np.ones(64, np.float32)
    state["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    safetensors_numpy.save_file(state, path)
    with pytest.raises(ValueError, match=r"model.safetensors: tensors \['model.layers.0.self_attn"):
        pretrained.load(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor .* the file is truncated"):
        pretrained.load(tmp_path)
    path.unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is a PyTorch pickle"):
        SafetensorsCheckpoint(tmp_path)


def test_unsupported_options_are_refused(llama_folder, tmp_path):
    _, params = llama_folder
    yarn = {**_llama_json(LLAMA), "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    _write(tmp_path, LLAMA, params, yarn)
    with pytest.raises(ValueError, match=r"config.json: rope type 'yarn' is not supported"):
        pretrained.load(tmp_path)
    folder = tmp_path / "no-bos"
    _write(
        folder, LLAMA, params, {**_llama_json(LLAMA), "bos_token_id": None, "eos_token_id": None}
    )
    with pytest.raises(ValueError, match=r"pass the document-start token as load\(\.\.\., bos_id"):
        pretrained.load(folder)
    assert pretrained.load(folder, bos_id=3).bos_source.startswith("given by the caller")
    with pytest.raises(ValueError, match="beyond the context"):
        pretrained.load(folder, bos_id=3, max_len=129)


# ----------------------------------------------------------------------------- scoring runs


@pytest.mark.filterwarnings("ignore:the 2-gram histogram")  # 96 tokens: undersampled
def test_a_scoring_run_states_the_checkpoints_document_start(llama_folder, tmp_path):
    """`l2m bipartite --model FOLDER` writes the document start `load` took from the folder:
    the BOS that tokenizer.json's post-processor adds (an id other than config.json's, so the
    two cannot be confused); config.json's BOS without a tokenizer; --bos-id when given."""
    import shutil

    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tok_models

    from l2m_jax.cli import main
    from l2m_jax.experiments.bipartite import _document_start

    folder, _ = llama_folder
    with_tokenizer = tmp_path / "with_tokenizer"
    shutil.copytree(folder, with_tokenizer)
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate("abcdef")}, "<s>": 7}
    tokenizer = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 7)]
    )
    tokenizer.save(str(with_tokenizer / "tokenizer.json"))
    model = pretrained.load(with_tokenizer)
    assert model.bos_id == 7 and "post-processor" in model.bos_source

    docs = np.random.default_rng(1).integers(0, 8, (6, 16)).astype(np.int32)
    np.save(tmp_path / "docs.npy", docs)
    out = tmp_path / "bp.json"
    argv = ["bipartite", "--model", str(with_tokenizer), "--max-len", "32", "--bootstrap", "10"]
    argv += ["--tokens", str(tmp_path / "docs.npy"), "--quiet", "--json", str(out)]
    assert main(argv) == 0
    start = json.loads(out.read_text())["document_start"]
    assert start == {"bos_id": 7, "token": "<s>", "source": model.bos_source}

    plain = pretrained.load(folder)  # no tokenizer.json: config.json's bos_token_id
    assert plain.bos_source.startswith("config.json bos_token_id = 1")
    assert _document_start(plain, None) == {"bos_id": 1, "token": None, "source": plain.bos_source}
    given = pretrained.load(with_tokenizer, bos_id=3)
    assert _document_start(given, 3) == {"bos_id": 3, "token": "c", "source": "--bos-id"}


def test_a_folder_without_a_tokenizer_cannot_read_a_corpus(llama_folder, capsys):
    from l2m_jax.cli import main

    folder, _ = llama_folder
    argv = ["bipartite", "--model", str(folder), "--corpus", "sword", "--max-len", "32"]
    assert main([*argv, "--quiet"]) == 2
    assert "has no tokenizer.json to read --corpus sword" in capsys.readouterr().err
