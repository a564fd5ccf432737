"""Tokenizers that work offline: byte-level, GPT-2 BPE, SmolLM2's (from GGUF), Hugging Face
checkpoints' tokenizer.json, locally trained BPE.

    tok = get_tokenizer("gpt2")      # "bytes", "gpt2", "smollm2", "gguf:PATH", "hf:DIR", "bpe:PATH"
    ids = tok.encode("In the beginning")  ->  list[int]
    tok.decode(ids), tok.vocab_size, tok.bos_id, tok.name

"gpt2" rebuilds GPT-2's byte-level BPE from the `gpt2.tiktoken` rank file that the
openai-whisper package ships (located, never imported); "smollm2" and "gguf:PATH" rebuild a
model's tokenizer from the vocabulary stored in its GGUF file (byte-level BPE with merges, or
SentencePiece BPE with scores); `train_bpe` trains a byte-level BPE on a corpus with the
`tokenizers` library and saves it as JSON for "bpe:PATH". "hf:DIR" reads DIR/tokenizer.json
(a Hugging Face checkpoint folder) with `tokenizers`, truncation and padding off; its bos_id is
the checkpoint's document start (`l2m_jax.models.hf.document_start`). Rebuilt tokenizers are
cached as JSON under `cache_dir()`. `encode` never adds special tokens: models prepend BOS.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["Tokenizer", "cache_dir", "get_tokenizer", "train_bpe"]

_WHISPER_INSTALL = "pip install --no-deps openai-whisper"
_FORMAT = 2  # bump when a rebuilt tokenizer changes (invalidates cached JSON)
_BOS_CANDIDATES = ("<|endoftext|>", "<s>", "<|bos|>", "<bos>")


def cache_dir() -> pathlib.Path:
    """Where l2m_jax caches derived files ($L2M_CACHE, else $XDG_CACHE_HOME/l2m_jax)."""
    root = os.environ.get("L2M_CACHE")
    if root is None:
        root = pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "l2m_jax"
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes `text` so that concurrent readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@functools.cache
def _byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's printable stand-in character for each byte value (the byte-level alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(_byte_to_unicode())}


class Tokenizer:
    """A text <-> token-id map. `bos_id` is the id a model conditions on first (None: none).

    Attributes:
      name: how `get_tokenizer` names it (stable; used in cache keys).
      vocab_size: number of ids (every id is < vocab_size).
      bos_id: beginning-of-sequence id, or None for a plain BPE without one.
      eos_id: end-of-sequence id, or None.
    """

    def __init__(
        self, name: str, backend, vocab_size: int, bos_id: int | None, eos_id: int | None = None
    ):
        self.name = name
        self._backend = backend  # a tokenizers.Tokenizer, or None for byte level
        self.vocab_size = int(vocab_size)
        self.bos_id = bos_id
        self.eos_id = eos_id

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id})"

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self._backend is None:
            return list(text.encode("utf-8"))
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encodes many texts (in parallel threads for BPE) into int32 arrays."""
        if self._backend is None:
            return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) for t in texts]
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)  # >=0.21
        encodings = encode(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        if self._backend is None:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return self._backend.decode(ids, skip_special_tokens=True)

    @functools.cached_property
    def token_texts(self) -> tuple[str, ...]:
        """The text of each id on its own ('' for special ids; U+FFFD for partial UTF-8)."""
        if self._backend is None:
            return (*(bytes([i]).decode("utf-8", errors="replace") for i in range(256)), "")
        special = {int(i) for i in self._backend.get_added_tokens_decoder()}
        byte_level = type(self._backend.decoder).__name__ == "ByteLevel"
        to_byte = _unicode_to_byte()
        out = []
        for i in range(self.vocab_size):
            piece = self._backend.id_to_token(i)
            if i in special or piece is None:
                out.append("")
            elif byte_level:  # GPT-2 style: each character stands for one byte
                ok = all(c in to_byte for c in piece)
                raw = bytes(to_byte[c] for c in piece) if ok else b""
                out.append(raw.decode("utf-8", errors="replace"))
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):  # SentencePiece byte fallback
                out.append(bytes([int(piece[3:5], 16)]).decode("utf-8", errors="replace"))
            else:  # SentencePiece: "▁" marks a space
                out.append(piece.replace("▁", " "))
        return tuple(out)


def _byte_level_tokenizer(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    specials: Sequence[str] = (),
    digits: bool = False,
    split: str | None = None,
    nfc: bool = False,
):
    """Byte-level BPE; `split` replaces GPT-2's pre-tokenizer regex, `digits` splits every
    digit apart first, `nfc` normalises the text to Unicode NFC first."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    if nfc:
        backend.normalizer = normalizers.NFC()
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    if split is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps += [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    backend.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    if specials:
        backend.add_special_tokens(list(specials))
    return backend


def _gpt2_rank_file() -> pathlib.Path:
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the GPT-2 BPE needs the openai-whisper package; {_WHISPER_INSTALL}")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "assets" / "gpt2.tiktoken"
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall with {_WHISPER_INSTALL}")
    return path


def _gpt2() -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    rank_file = _gpt2_rank_file()
    digest = hashlib.sha256(rank_file.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"tokenizer-gpt2-v{_FORMAT}-{digest}.json"
    if cached.is_file():
        backend = HFTokenizer.from_file(str(cached))
    else:
        ranks: dict[bytes, int] = {}
        for line in rank_file.read_text().splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        # A merge for every way a token splits into two earlier tokens, in the token's rank
        # order (ties by the parts' ranks): BPE with these merges reproduces rank-order BPE.
        merges = []
        for token, rank in ranks.items():
            for cut in range(1, len(token)):
                left, right = ranks.get(token[:cut]), ranks.get(token[cut:])
                if left is not None and right is not None and max(left, right) < rank:
                    merges.append((rank, left, right, token[:cut], token[cut:]))
        merges.sort()
        to_str = lambda b: "".join(_byte_to_unicode()[x] for x in b)
        vocab = {to_str(t): r for t, r in ranks.items()}
        backend = _byte_level_tokenizer(
            vocab, [(to_str(a), to_str(b)) for *_, a, b in merges], ["<|endoftext|>"]
        )
        _write_atomic(cached, backend.to_str())
    eot = backend.token_to_id("<|endoftext|>")
    return Tokenizer("gpt2", backend, backend.get_vocab_size(), bos_id=eot, eos_id=eot)


def _from_gguf(path: pathlib.Path, name: str) -> Tokenizer:
    import json

    from tokenizers import Tokenizer as HFTokenizer

    stat = path.stat()
    text = f"{_FORMAT}|{path}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    cached, meta = (cache_dir() / f"tokenizer-gguf-{key}{ext}" for ext in (".json", ".ids.json"))
    if not (cached.is_file() and meta.is_file()):
        backend, ids = _build_from_gguf(path)
        _write_atomic(cached, backend.to_str())
        _write_atomic(meta, json.dumps(ids))
    backend, ids = HFTokenizer.from_file(str(cached)), json.loads(meta.read_text())
    return Tokenizer(name, backend, ids["vocab_size"], bos_id=ids["bos_id"], eos_id=ids["eos_id"])


# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) of byte-level BPE files we rebuild.
_GPT2_SPLIT = "gpt2"
_LLAMA3_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# name -> (split regex, digits one by one first, NFC first)
_PRE_TOKENIZERS = {
    None: (_GPT2_SPLIT, False, False),
    "default": (_GPT2_SPLIT, False, False),
    "gpt-2": (_GPT2_SPLIT, False, False),
    "smollm": (_GPT2_SPLIT, True, False),  # digits one by one, then GPT-2's split
    "llama-bpe": (_LLAMA3_SPLIT, False, False),  # Llama 3
    "qwen2": (_QWEN2_SPLIT, False, True),  # Qwen2/2.5/3 (NFC as their tokenizer.json)
}


def _build_from_gguf(path: pathlib.Path):
    import gguf

    fields = gguf.GGUFReader(str(path)).fields

    def get(key, default=None):
        return fields[key].contents() if key in fields else default

    model = get("tokenizer.ggml.model")
    tokens = get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(f"{path} holds no tokenizer (tokenizer.ggml.tokens is missing)")
    types = get("tokenizer.ggml.token_type", [1] * len(tokens))
    if model == "gpt2":
        pre = get("tokenizer.ggml.pre")
        if pre not in _PRE_TOKENIZERS:
            raise ValueError(
                f"{path}: pre-tokenizer {pre!r} is not supported; known: "
                f"{sorted(k for k in _PRE_TOKENIZERS if k)}"
            )
        split, digits, nfc = _PRE_TOKENIZERS[pre]
        merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
        vocab = {t: i for i, t in enumerate(tokens)}
        specials = [t for t, kind in zip(tokens, types, strict=True) if kind in (3, 4)]
        backend = _byte_level_tokenizer(
            vocab,
            merges,
            specials,
            digits=digits,
            split=None if split == _GPT2_SPLIT else split,
            nfc=nfc,
        )
    elif model == "llama":
        scores = get("tokenizer.ggml.scores")
        if scores is None:
            raise ValueError(f"{path}: a SentencePiece tokenizer needs tokenizer.ggml.scores")
        backend = _sentencepiece_tokenizer(
            tokens, scores, types, add_prefix=bool(get("tokenizer.ggml.add_space_prefix", True))
        )
    else:
        raise ValueError(
            f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') and "
            "SentencePiece BPE ('llama') tokenizers can be rebuilt from GGUF here"
        )
    ids = {k: get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos")}
    ids = {f"{k}_id": None if v is None else int(v) for k, v in ids.items()}
    return backend, {**ids, "vocab_size": len(tokens)}


def _sentencepiece_tokenizer(tokens, scores, types, *, add_prefix: bool):
    """SentencePiece BPE (llama.cpp's "llama" vocabulary): spaces become "▁", pairs merge in
    order of the merged piece's score, unknown characters fall back to <0xXX> byte pieces."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    normal = {
        t: (s, i)
        for i, (t, s, k) in enumerate(zip(tokens, scores, types, strict=True))
        if k in (1, 4)
    }
    merges = []
    for token, (score, i) in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                merges.append((-score, i, left, right))
    merges.sort()
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = next((t for t, k in zip(tokens, types, strict=True) if k == 2), None)
    backend = HFTokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(a, b) for *_, a, b in merges],
            unk_token=unk,
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    steps = [normalizers.Prepend("▁")] if add_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    strip = [decoders.Strip(" ", 1, 0)] if add_prefix else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    specials = [t for t, k in zip(tokens, types, strict=True) if k in (2, 3)]
    backend.add_special_tokens(specials)
    return backend


def _bpe_file(path: pathlib.Path, name: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    if not path.is_file():
        raise ValueError(
            f"no tokenizer file at {path}; train one with "
            "l2m_jax.sources.tokenize.train_bpe(texts, vocab_size, path)"
        )
    backend = HFTokenizer.from_file(str(path))
    bos = next((i for t in _BOS_CANDIDATES if (i := backend.token_to_id(t)) is not None), None)
    return Tokenizer(name, backend, backend.get_vocab_size(), bos_id=bos, eos_id=bos)


def _hf_folder(folder: pathlib.Path, name: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    from l2m_jax.models import hf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"no tokenizer.json in {folder}; a Hugging Face checkpoint folder ships its "
            "tokenizer as tokenizer.json"
        )
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises its own Exception type on a bad file
        raise ValueError(f"{path} is not a readable tokenizer.json: {err}") from err
    backend.no_truncation()
    backend.no_padding()
    bos, _ = hf.document_start(folder, backend)
    config = hf.read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    return Tokenizer(
        name,
        backend,
        backend.get_vocab_size(),
        bos_id=bos,
        eos_id=None if eos is None or isinstance(eos, list) else int(eos),
    )


@functools.cache
def _get(name: str) -> Tokenizer:
    if name == "bytes":
        return Tokenizer("bytes", None, 257, bos_id=256, eos_id=None)
    if name == "gpt2":
        return _gpt2()
    if name.startswith("bpe:"):
        path = pathlib.Path(name[4:]).expanduser().resolve()
        return _bpe_file(path, f"bpe:{path}")
    if name.startswith("hf:"):
        folder = pathlib.Path(name[3:]).expanduser().resolve()
        return _hf_folder(folder, f"hf:{folder}")
    if name.startswith("gguf:") or name.endswith(".gguf"):
        path = pathlib.Path(name.removeprefix("gguf:")).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"no GGUF file at {path}")
        return _from_gguf(path, f"gguf:{path}")
    from l2m_jax.models import pretrained  # the registry of installed models

    if name in pretrained.KNOWN_MODELS:
        return _from_gguf(pretrained.locate(name), name)
    raise ValueError(
        f"unknown tokenizer {name!r}; choose 'bytes', 'gpt2', "
        f"{', '.join(repr(n) for n in pretrained.KNOWN_MODELS)}, 'gguf:PATH', 'hf:DIR' or "
        "'bpe:PATH'"
    )


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called `name`: "bytes", "gpt2", "smollm2", "gguf:PATH", "hf:DIR" (a
    Hugging Face folder's tokenizer.json) or "bpe:PATH"."""
    if not isinstance(name, str):
        raise TypeError(f"tokenizer name must be a str, got {type(name).__name__}")
    return _get(name)


def train_bpe(
    texts: Iterable[str], vocab_size: int, path: str | os.PathLike, *, min_frequency: int = 2
) -> Tokenizer:
    """Trains a byte-level BPE on `texts`, saves it as JSON at `path`, returns "bpe:PATH".

    Id 0 is "<|endoftext|>", used as BOS. A few seconds for 5 MB of text and a 4k-16k vocab.
    """
    from tokenizers import trainers
    from tokenizers.pre_tokenizers import ByteLevel

    if vocab_size < 257 + 1:
        raise ValueError(
            f"vocab_size must be at least 258 (256 bytes + BOS + a merge), got {vocab_size}"
        )
    backend = _byte_level_tokenizer({}, [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    path = pathlib.Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(path))
    _get.cache_clear()
    return get_tokenizer(f"bpe:{path}")
