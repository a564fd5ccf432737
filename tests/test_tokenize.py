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
