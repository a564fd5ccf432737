"""Checkpoints written by transformers load with `pretrained.load` and compute transformers'
logits; their tokenizers give transformers' ids; GGUF files converted from them the way
llama.cpp's converter does give the same logits.

Every family gets a tiny random checkpoint (`AutoModelForCausalLM.from_config(...)`, every
weight perturbed by 0.1·N(0, 1) so that biases and norm scales matter, `save_pretrained`),
and a tokenizer.json built offline with `tokenizers` in the layout of the family's real
tokenizers, saved with the family's transformers tokenizer class (so transformers rebuilds it
as it does for real checkpoints).

Tolerances: fp32 logits to 1e-4 of the largest logit (measured: below 1e-6). bfloat16
checkpoints (bfloat16 matmuls) within 2e-2 of our fp32 logits in RMS over all logits: the
rounding of the weights dominates; the largest single error is 0.4-2.3e-2 of the largest
logit, and transformers' own bfloat16 model is 0.6-2.6e-2 away from its fp32 one on the same
weights. `slow`: needs torch and transformers.
"""

import copy
import json
import math

import numpy as np
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from l2m_jax import models  # noqa: E402
from l2m_jax.models import pretrained  # noqa: E402

V = 512  # model vocabulary (>= every tokenizer's)
T = 24  # tokens scored per sequence
WIDTH = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)

TRAIN = (
    "In the beginning God created the heavens and the earth. The earth was formless and empty.\n"
    "Darkness was on the surface of the deep, and God's Spirit was hovering over the waters. "
    "In 1984, 3.14159 and 1,000,000 people walked 12345678 steps; don't, I'll, we've.\n"
    "Numbers: ½ ² ³ ٣٤٥ ४२ Ⅻ ① 𝟙𝟚 〇 ¾ and café naïve Ünïcödé 日本語 🤗\n"
) * 8
TEXTS = [
    "In 1984, 3.14159 and 1,000,000 people walked 12345678 steps.",
    "runs   of    spaces\t\ttabs  \n  and trailing   ",
    "Unicode numerals: ½ ² ³ ٣٤٥ ४२ Ⅻ ① 𝟙𝟚 〇 ¾",
    "line one\nline two\n\n\nline five\r\nwindows\r\n",
    "mixed: café naïve Ünïcödé 🤗 日本語 don't I'll WE'VE",
    "  leading spaces and a final newline\n",
]
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@pytest.mark.parametrize("name", ["gpt2", "pythia", "qwen3", "mamba2"])
def test_model_parallel_placement_of_fused_and_squeezed_tensors(checkpoints, name):
    """Each device reads its slice of GPT-2's fused c_attn columns, of GPT-NeoX's per-head
    q|k|v rows, of Qwen3's q/k norms and of Mamba-2's conv kernels; the logits do not move."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    ckpt = checkpoints(name)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    split = pretrained.load(ckpt.folder, mesh=mesh)
    leaves = jax.tree.leaves(split.params)
    assert sum(a.sharding.spec != PartitionSpec(*[None] * a.ndim) for a in leaves) >= 5
    tokens = jax.device_put(
        jnp.asarray(np.tile(ckpt.tokens, (4, 1))), NamedSharding(mesh, PartitionSpec("data"))
    )
    got = np.asarray(split.logprob_fn(split.params, tokens))[:2]
    model, _ = ckpt.ours()
    want = np.asarray(model.logprob_fn(model.params, jnp.asarray(ckpt.tokens)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- tokenizers


def _byte_level(kind):
    """Byte-level BPE as GPT-2, GPT-NeoX (NFC), Llama 3 (its split regex, a BOS template) and
    Qwen2 (NFC, digits one by one) ship it."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    if kind in ("neox", "qwen2"):
        tok.normalizer = normalizers.NFC()
    if kind in ("gpt2", "neox"):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        split = LLAMA3_SPLIT if kind == "llama3" else QWEN2_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    specials = {
        "gpt2": ["<|endoftext|>"],
        "neox": ["<|endoftext|>", "<|padding|>"],
        "llama3": ["<|begin_of_text|>", "<|end_of_text|>"],
        "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    }[kind]
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAIN], trainer=trainer)
    if kind == "llama3":
        bos = ("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[bos]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _sentencepiece():
    """Llama 2 / Mistral: SentencePiece-style BPE with byte fallback and a <s> template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=480, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(TRAIN.splitlines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


TOKENIZERS = {  # kind -> (builder, transformers class, special tokens, adds BOS)
    "sp": (
        _sentencepiece,
        "LlamaTokenizer",
        dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    ),
    "llama3": (
        lambda: _byte_level("llama3"),
        "PreTrainedTokenizerFast",
        dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"),
    ),
    "qwen2": (
        lambda: _byte_level("qwen2"),
        "Qwen2Tokenizer",
        dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
    ),
    "gpt2": (
        lambda: _byte_level("gpt2"),
        "GPT2Tokenizer",
        dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    ),
    "neox": (
        lambda: _byte_level("neox"),
        "GPTNeoXTokenizer",
        dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    ),
}


def _save_tokenizer(kind, folder):
    build, cls, specials = TOKENIZERS[kind]
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=build(), **specials)
    fast.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = cls
    path.write_text(json.dumps(config))


# ----------------------------------------------------------------------------- checkpoints

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
FAMILIES = {  # name -> (transformers config, tokenizer kind, BOS id the tokenizer sets)
    "llama2": (
        lambda: transformers.LlamaConfig(
            vocab_size=V, **WIDTH, rope_theta=1e4, mlp_bias=True, bos_token_id=1, eos_token_id=2
        ),
        "sp",
    ),
    "llama3.1": (
        lambda: transformers.LlamaConfig(
            vocab_size=V,
            **WIDTH,
            num_key_value_heads=2,
            rope_theta=5e5,
            rope_scaling=LLAMA3_ROPE,
            max_position_embeddings=128,
        ),
        "llama3",
    ),
    "llama3.2-linear": (
        lambda: transformers.LlamaConfig(
            vocab_size=V,
            **WIDTH,
            num_key_value_heads=2,
            rope_scaling={"rope_type": "linear", "factor": 4.0},
            attention_bias=True,
            tie_word_embeddings=True,
        ),
        "llama3",
    ),
    "mistral": (
        lambda: transformers.MistralConfig(
            vocab_size=V, **WIDTH, num_key_value_heads=2, head_dim=24, sliding_window=32
        ),
        "sp",
    ),
    "qwen2": (
        lambda: transformers.Qwen2Config(
            vocab_size=V, **WIDTH, num_key_value_heads=2, rope_theta=1e6, bos_token_id=0
        ),
        "qwen2",
    ),
    "qwen2.5-tied": (
        lambda: transformers.Qwen2Config(
            vocab_size=V, **WIDTH, num_key_value_heads=1, tie_word_embeddings=True, bos_token_id=0
        ),
        "qwen2",
    ),
    "qwen3": (
        lambda: transformers.Qwen3Config(
            vocab_size=V, **WIDTH, num_key_value_heads=2, head_dim=32, bos_token_id=0
        ),
        "qwen2",
    ),
    "gpt2": (
        lambda: transformers.GPT2Config(
            vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0
        ),
        "gpt2",
    ),
    "pythia": (
        lambda: transformers.GPTNeoXConfig(vocab_size=V, **WIDTH, rotary_pct=0.25, bos_token_id=0),
        "neox",
    ),
    "gpt-neox-sequential": (
        lambda: transformers.GPTNeoXConfig(
            vocab_size=V, **WIDTH, rotary_pct=0.5, use_parallel_residual=False, bos_token_id=0
        ),
        "neox",
    ),
    "mamba": (
        lambda: transformers.MambaConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=8, bos_token_id=0
        ),
        "neox",
    ),
    "mamba2": (
        lambda: transformers.Mamba2Config(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=2,
            state_size=8,
            head_dim=8,
            num_heads=8,
            n_groups=2,
            chunk_size=8,
            bos_token_id=0,
        ),
        "neox",
    ),
}
ARCHITECTURES = {
    "llama2": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "pythia": "GPTNeoXForCausalLM",
    "mamba": "MambaForCausalLM",
    "mamba2": "Mamba2ForCausalLM",
}


class Checkpoint:
    def __init__(self, name, folder):
        make_config, self.tokenizer_kind = FAMILIES[name]
        torch.manual_seed(0)
        self.hf_config = make_config()
        self.model = transformers.AutoModelForCausalLM.from_config(self.hf_config).eval()
        with torch.no_grad():  # nonzero biases, norms 1 ± 0.1, logits of a few units
            for p in self.model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        self.folder = folder
        self.model.save_pretrained(folder)
        _save_tokenizer(self.tokenizer_kind, folder)
        self.tokens = np.random.default_rng(1).integers(0, V, (2, T))
        with torch.no_grad():
            self.logits = self.model(torch.from_numpy(self.tokens)).logits.numpy()
        self._ours = None

    def ours(self):
        """(our loaded model, its logits), loaded once."""
        if self._ours is None:
            model = pretrained.load(self.folder)
            self._ours = model, _logits(model, self.tokens)
        return self._ours


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Checkpoint(name, tmp_path_factory.mktemp(name.replace(".", "_")))
        return cache[name]

    return get


def _logits(model, tokens):
    return np.asarray(
        jax.jit(lambda p, t: models.apply(model.config, p, t))(model.params, jnp.asarray(tokens))
    )


def _relative(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_equal_transformers(checkpoints, name):
    ckpt = checkpoints(name)
    model, got = ckpt.ours()
    assert model.source.endswith(f"({type(ckpt.model).__name__})")
    assert np.abs(ckpt.logits).max() > 1.0
    err = _relative(got, ckpt.logits)
    print(f"\n{name}: max |Δlogit| / max |logit| = {err:.1e}")
    assert err < 1e-4, err
    # the estimators' scores: log-softmax after the document start
    bos = np.full((2, 1), model.bos_id)
    with torch.no_grad():
        ref = ckpt.model(torch.from_numpy(np.concatenate([bos, ckpt.tokens[:, :-1]], 1))).logits
        ref = torch.log_softmax(ref, -1).gather(-1, torch.from_numpy(ckpt.tokens)[..., None])
    scores = model.logprob_fn(model.params, jnp.asarray(ckpt.tokens, jnp.int32))
    np.testing.assert_allclose(np.asarray(scores), ref[..., 0].numpy(), rtol=0, atol=1e-4)


def test_the_rope_scaling_and_the_partial_rotary_matter(checkpoints):
    """Dropping Llama 3.1's scaling, or rotating all of Pythia's head, changes the logits:
    the parity above is not blind to them."""
    import dataclasses

    for name, change in (
        ("llama3.1", dict(rope_scaling=None)),
        ("llama3.2-linear", dict(rope_scaling=None)),
        ("pythia", dict(rotary_dim=None)),
    ):
        ckpt = checkpoints(name)
        model, _ = ckpt.ours()
        wrong = model._replace(config=dataclasses.replace(model.config, **change))
        assert _relative(_logits(wrong, ckpt.tokens), ckpt.logits) > 1e-2, name


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bfloat16_checkpoints_stay_bfloat16_and_near_float32(checkpoints, tmp_path, name):
    ckpt = checkpoints(name)
    half = copy.deepcopy(ckpt.model).to(torch.bfloat16)
    half.save_pretrained(tmp_path)
    model = pretrained.load(tmp_path)
    embed = model.params["embed"]["tokens"]
    assert embed.dtype == jnp.bfloat16 and model.config.dtype == "bfloat16"
    # the bits read without torch are the bits torch wrote
    theirs = half.get_input_embeddings().weight.detach()
    np.testing.assert_array_equal(
        np.asarray(embed).view(np.uint16), theirs.view(torch.int16).numpy().view(np.uint16)
    )
    _, fp32 = ckpt.ours()
    bf16 = _logits(model, ckpt.tokens)
    err = float(np.sqrt(np.mean((bf16 - fp32) ** 2) / np.mean(fp32**2)))
    with torch.no_grad():  # for the record: what bfloat16 costs transformers on these weights
        theirs = half(torch.from_numpy(ckpt.tokens)).logits.float()
    print(
        f"\n{name} bfloat16 vs fp32: ours rms {err:.1e}, max {_relative(bf16, fp32):.1e}; "
        f"transformers max {_relative(theirs.numpy(), ckpt.logits):.1e}"
    )
    assert err < 2e-2, err


def test_sharded_checkpoints_and_the_context(checkpoints, tmp_path):
    ckpt = checkpoints("llama3.1")
    ckpt.model.save_pretrained(tmp_path, max_shard_size="60KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    (whole, logits), split = ckpt.ours(), pretrained.load(tmp_path)
    np.testing.assert_array_equal(_logits(split, ckpt.tokens), logits)
    assert whole.max_len == 128
    mistral, _ = checkpoints("mistral").ours()  # full attention equals the window up to 32
    assert mistral.max_len == 32
    with pytest.raises(ValueError, match=r"33 tokens exceed max_len=32 of .*sliding_window = 32"):
        mistral.logprob_fn(mistral.params, jnp.zeros((1, 33), jnp.int32))


# ----------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("name", ["llama2", "llama3.1", "qwen2", "gpt2", "pythia"])
def test_token_ids_and_the_document_start_equal_transformers(checkpoints, name):
    ckpt = checkpoints(name)
    theirs = transformers.AutoTokenizer.from_pretrained(ckpt.folder)
    assert type(theirs).__name__ == TOKENIZERS[ckpt.tokenizer_kind][1].replace(
        "PreTrainedTokenizerFast", "TokenizersBackend"
    )
    model, _ = ckpt.ours()
    for text in TEXTS:
        ids = theirs(text, add_special_tokens=False)["input_ids"]
        assert model.tokenizer.encode(text) == ids, (name, text)
        assert model.tokenizer.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        with_specials = theirs(text)["input_ids"]
        if with_specials != ids:  # the tokenizer adds a BOS: it is our document start
            assert with_specials == [model.bos_id, *ids], (name, text)
            assert "the tokenizer starts every text with" in model.bos_source
        else:
            assert model.bos_id == ckpt.hf_config.bos_token_id
            assert "config.json bos_token_id" in model.bos_source
    assert model.tokenizer.bos_id == model.bos_id
    print(f"\n{name}: document start {model.bos_id}: {model.bos_source}")


# ----------------------------------------------------------------------------- GGUF


def _rope_factors(hf_config):
    """llama.cpp's convert_hf_to_gguf.py for rope_type llama3: one divisor per frequency."""
    params = hf_config.rope_parameters
    dim = hf_config.hidden_size // hf_config.num_attention_heads
    freqs = 1.0 / (params["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old = params["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def _permute(w, heads):
    """llama.cpp's converter: each head's rows (i, i + E/2) become rows (2i, 2i + 1)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _write_gguf(ckpt, path, arch):
    import gguf

    c = ckpt.hf_config
    sd = {k: v.detach().numpy() for k, v in ckpt.model.state_dict().items()}
    H, K = c.num_attention_heads, c.num_key_value_heads
    E = getattr(c, "head_dim", None) or c.hidden_size // H
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_key_length(E)
    w.add_value_length(E)
    w.add_rope_dimension_count(E)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    if c.rope_parameters.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(c.rope_parameters["factor"])
    tok = json.loads((ckpt.folder / "tokenizer.json").read_text())
    vocab = {**tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe" if arch == "llama" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(vocab["<|begin_of_text|>" if arch == "llama" else "<|endoftext|>"])
    permute = arch == "llama"
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for ours, theirs in (
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("attn_q_norm", "self_attn.q_norm"),
            ("attn_k_norm", "self_attn.k_norm"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ):
            for kind in ("weight", "bias"):
                value = sd.get(f"{p}{theirs}.{kind}")
                if value is None:
                    continue
                if permute and ours in ("attn_q", "attn_k"):
                    value = _permute(value, H if ours == "attn_q" else K)
                w.add_tensor(f"blk.{i}.{ours}.{kind}", np.ascontiguousarray(value))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    if c.rope_parameters.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", _rope_factors(c))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(
    "name, arch",
    [("llama3.1", "llama"), ("llama3.2-linear", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3")],
)
def test_gguf_conversions_compute_transformers_logits(checkpoints, tmp_path, name, arch):
    ckpt = checkpoints(name)
    _write_gguf(ckpt, tmp_path / "model.gguf", arch)
    model = pretrained.load(tmp_path / "model.gguf")
    if name == "llama3.1":
        assert model.config.rope_scaling.kind == "divisors"
    err = _relative(_logits(model, ckpt.tokens), ckpt.logits)
    print(f"\n{name} as GGUF ({arch}): {err:.1e}")
    assert err < 1e-4, err
    theirs = transformers.AutoTokenizer.from_pretrained(ckpt.folder)
    for text in TEXTS:
        assert model.tokenizer.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
