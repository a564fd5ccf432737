"""Tokenizers: exact round trips, GPT-2's published ids, a locally trained BPE, clear errors."""

import importlib.util

import pytest

from l2m_jax.sources.tokenize import get_tokenizer, train_bpe

SAMPLE = (
    "Hello world. ’Tis «unicode» ünïcödé 日本語, tabs\tand  spaces;\n\nnew lines 12345 "
    "and emoji 🙂 — done!"
)


def test_bytes_round_trip_and_bos():
    tok = get_tokenizer("bytes")
    ids = tok.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))
    assert tok.decode(ids) == SAMPLE
    assert (tok.vocab_size, tok.bos_id) == (257, 256)
    assert tok.decode([tok.bos_id, *ids]) == SAMPLE  # BOS carries no text


@pytest.mark.skipif(
    importlib.util.find_spec("whisper") is None,
    reason="needs openai-whisper's gpt2.tiktoken (pip install --no-deps openai-whisper)",
)
def test_gpt2_matches_published_ids():
    tok = get_tokenizer("gpt2")
    assert (tok.vocab_size, tok.bos_id) == (50257, 50256)
    # ids from GPT-2's vocabulary (Radford et al. 2019; the same in tiktoken and HF)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" The quick brown fox") == [383, 2068, 7586, 21831]
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert len(tok.encode(SAMPLE)) < len(SAMPLE.encode("utf-8"))


def test_trained_bpe_round_trips_and_reloads(tmp_path):
    text = ("The quick brown fox jumps over the lazy dog. " * 50) + SAMPLE
    tok = train_bpe([text], 320, tmp_path / "bpe.json")
    assert tok.name == f"bpe:{(tmp_path / 'bpe.json').resolve()}"
    assert tok.vocab_size <= 320 and tok.bos_id == 0
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox")  # merges learnt
    again = get_tokenizer(f"bpe:{tmp_path / 'bpe.json'}")
    assert again.encode(SAMPLE) == ids
    assert max(tok.encode_batch([SAMPLE, text])[1]) < tok.vocab_size


def test_token_texts_concatenate_to_the_text():
    tok = get_tokenizer("bytes")
    text = "Plain ASCII text. Two sentences!"
    assert "".join(tok.token_texts[i] for i in tok.encode(text)) == text


def test_bad_names_and_ids():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("wordpiece")
    with pytest.raises(TypeError, match="must be a str"):
        get_tokenizer(3)
    with pytest.raises(ValueError, match="train_bpe"):
        get_tokenizer("bpe:/nonexistent/tokenizer.json")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        get_tokenizer("bytes").decode([65, 300])
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_bpe(["abc"], 100, "/tmp/never-written.json")


def _gguf_tokenizer_file(path, model, tokens, types, **fields):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for key, value in fields.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.skipif(
    importlib.util.find_spec("sentencepiece") is None,
    reason="the reference needs pip install sentencepiece",
)
def test_gguf_sentencepiece_vocabulary_encodes_like_sentencepiece(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        (
            "The quick brown fox jumps over the lazy dog. In the beginning God "
            "created the heavens and the earth.\n"
        )
        * 40
        + "Numbers 12 and 345.\n"
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    n = sp.get_piece_size()
    kind = lambda i: 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
    path = _gguf_tokenizer_file(
        tmp_path / "spm.gguf",
        "llama",
        [sp.id_to_piece(i) for i in range(n)],
        [kind(i) for i in range(n)],
        token_scores=[sp.get_score(i) for i in range(n)],
        bos_token_id=sp.bos_id(),
        eos_token_id=sp.eos_id(),
        add_space_prefix=True,
    )
    tok = get_tokenizer(f"gguf:{path}")
    assert (tok.vocab_size, tok.bos_id) == (n, sp.bos_id())
    for text in ["The quick brown fox.", "In the beginning  God", SAMPLE, "lazy dogs 12345"]:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)) == text
    ids = tok.encode("the quick")
    assert "".join(tok.token_texts[i] for i in ids) == " the quick"


def test_gguf_byte_level_vocabulary_with_an_unknown_pre_tokenizer_is_refused(tmp_path):
    path = _gguf_tokenizer_file(
        tmp_path / "bpe.gguf",
        "gpt2",
        ["a", "b", "ab"],
        [1, 1, 1],
        token_merges=["a b"],
        tokenizer_pre="mystery",
    )
    with pytest.raises(ValueError, match="pre-tokenizer 'mystery' is not supported"):
        get_tokenizer(f"gguf:{path}")
