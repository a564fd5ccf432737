"""Pair and n-gram counts against a pure-Python Counter over the same documents."""

import collections

import jax
import numpy as np
import pytest

from l2m_jax.information import count_ngrams, count_pairs, two_point_mi

DISTANCES = (1, 2, 5, 17, 40)


def _docs(vocab_size, seed=0, count=30):
    """Ragged documents: empty ones, ones shorter than the larger distances, long ones."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 80, count)
    lengths[:3] = (0, 1, 200)
    return [rng.integers(0, vocab_size, n).astype(np.int32) for n in lengths]


def _reference(docs, offsets, vocab_size):
    counts = collections.Counter()
    for doc in docs:
        seq = doc.tolist()
        for i in range(len(seq) - offsets[-1]):
            key = 0
            for off in offsets:
                key = key * vocab_size + seq[i + off]
            counts[key] += 1
    return counts


def _as_dict(table):
    assert np.all(table.keys[1:] > table.keys[:-1])  # ascending, distinct
    assert np.all(table.counts > 0)
    return dict(zip(table.keys.tolist(), table.counts.tolist(), strict=True))


@pytest.mark.parametrize(
    ("vocab_size", "key_dtype"),
    [(7, np.uint32), (300, np.uint32), (2**18 + 1, np.uint64)],  # dense, 32-bit, 64-bit
)
def test_pairs_match_counter_on_every_path(vocab_size, key_dtype):
    docs = _docs(vocab_size)
    want = [_reference(docs, (0, d), vocab_size) for d in DISTANCES]
    runs = {
        "numpy": count_pairs(docs, DISTANCES, vocab_size, implementation="numpy"),
        # chunks smaller than the halo and than some documents, fed from a generator
        "numpy-stream": count_pairs(
            (d for d in docs), DISTANCES, vocab_size, chunk_tokens=13, implementation="numpy"
        ),
        "xla-8-devices": count_pairs(
            docs, DISTANCES, vocab_size, chunk_tokens=100, implementation="xla"
        ),
    }
    for name, got in runs.items():
        assert got.distances == DISTANCES, name
        assert got.tokens == sum(d.size for d in docs), name
        assert got.documents == sum(d.size > 0 for d in docs), name
        np.testing.assert_array_equal(
            got.unigrams, np.bincount(np.concatenate(docs), minlength=vocab_size)
        )
        for table, ref in zip(got.tables, want, strict=True):
            assert table.keys.dtype == key_dtype, name
            assert _as_dict(table) == dict(ref), name


def test_pairs_never_cross_documents():
    docs = [np.zeros(50, np.int32), np.ones(50, np.int32)]
    got = count_pairs(docs, [1, 10], 2)
    for table, d in zip(got.tables, [1, 10], strict=True):
        assert _as_dict(table) == {0: 50 - d, 3: 50 - d}  # (0, 0) and (1, 1) only


def test_ngrams_match_counter():
    vocab_size = 300
    docs = _docs(vocab_size, seed=1)
    for n in (1, 2, 3):
        want = dict(_reference(docs, tuple(range(n)), vocab_size))
        assert _as_dict(count_ngrams(docs, n, vocab_size)) == want
        got = count_ngrams(docs, n, vocab_size, implementation="xla", chunk_tokens=64)
        assert _as_dict(got) == want
    # 4-grams over V = 70 000 need 64-bit keys (V^4 ≈ 2.4e19 > 2^64 does not fit: error)
    with pytest.raises(ValueError, match="64 bits"):
        count_ngrams(docs, 4, 70_000)


def test_eight_devices_equal_one_device():
    """The sharded XLA path: counts exactly equal, estimates equal to 1e-12 relative."""
    assert len(jax.devices()) == 8
    vocab_size = 50
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, vocab_size, n) for n in rng.integers(100, 900, 12)]
    distances = [1, 2, 3, 8, 64]
    one = count_pairs(docs, distances, vocab_size, implementation="xla", devices=jax.devices()[:1])
    eight = count_pairs(docs, distances, vocab_size, implementation="xla", chunk_tokens=1000)
    host = count_pairs(docs, distances, vocab_size, implementation="numpy")
    for a, b, c in zip(one.tables, eight.tables, host.tables, strict=True):
        np.testing.assert_array_equal(a.keys, b.keys)
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.keys, c.keys)
        np.testing.assert_array_equal(a.counts, c.counts)
    mi_one = two_point_mi(
        docs, distances, vocab_size, implementation="xla", devices=jax.devices()[:1]
    )
    mi_eight = two_point_mi(docs, distances, vocab_size, implementation="xla")
    np.testing.assert_allclose(mi_eight.mi, mi_one.mi, rtol=1e-12, atol=0)
    np.testing.assert_allclose(mi_eight.stderr, mi_one.stderr, rtol=1e-12, atol=0)


def test_bad_input():
    docs = [np.array([0, 1, 2, 3])]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        count_pairs(docs, [1], vocab_size=3)
    with pytest.raises(ValueError, match="negative"):
        count_pairs([np.array([0, -1, 2])], [1])
    with pytest.raises(ValueError, match="empty"):
        count_pairs([], [1], vocab_size=4)
    with pytest.raises(ValueError, match="empty"):
        count_pairs([np.zeros(0, np.int32)], [1], vocab_size=4)
    with pytest.raises(ValueError, match="empty"):
        count_pairs(iter([np.zeros(0, np.int32)]), [1], vocab_size=4)
    with pytest.raises(TypeError, match="integer token ids"):
        count_pairs([np.array([0.0, 1.0])], [1])
    with pytest.raises(ValueError, match="≥ 1"):
        count_pairs(docs, [0, 1])
    with pytest.raises(ValueError, match="distinct"):
        count_pairs(docs, [2, 2])
    with pytest.raises(ValueError, match="vocab_size is required"):
        count_pairs(iter(docs), [1])
    with pytest.raises(ValueError, match="implementation"):
        count_pairs(docs, [1], implementation="cuda")
    with pytest.raises(ValueError, match="shape"):
        count_pairs(np.zeros((2, 2, 2), np.int32), [1])


def test_threaded_host_path_matches_counter():
    """Chunks of ≥ 2^16 starts spread the distances over threads (sorted and dense tables)."""
    rng = np.random.default_rng(4)
    for vocab_size in (1000, 60):
        docs = [rng.integers(0, vocab_size, n) for n in (40_000, 30_000, 9)]
        got = count_pairs(docs, [1, 7, 300], vocab_size, implementation="numpy")
        for table, d in zip(got.tables, [1, 7, 300], strict=True):
            assert _as_dict(table) == dict(_reference(docs, (0, d), vocab_size))


def test_many_short_documents_match_counter():
    """More documents per chunk than `_TAIL_SLICES` take the masked path for the starts past a
    document's end; small chunks (few documents each) take the one-slice-per-document path."""
    from l2m_jax.information.counting import _TAIL_SLICES

    rng = np.random.default_rng(7)
    docs = [rng.integers(0, 300, n) for n in rng.integers(0, 12, 2 * _TAIL_SLICES)]
    want = [dict(_reference(docs, (0, d), 300)) for d in (1, 3, 11)]
    for chunk in (1 << 24, 500):
        got = count_pairs(docs, [1, 3, 11], 300, chunk_tokens=chunk, implementation="numpy")
        assert [_as_dict(t) for t in got.tables] == want, chunk
        np.testing.assert_array_equal(
            got.unigrams, np.bincount(np.concatenate(docs), minlength=300)
        )


@pytest.mark.parametrize("group", [1 << 22, 40])  # short documents in one or several groups
def test_document_edges_give_each_distances_marginals_and_the_unigrams(monkeypatch, group):
    """The unigrams less `_document_edges` (each document's first and last d tokens, by
    distance band) are the histograms of the first and of the second token over the pairs at
    every distance, for documents longer than the largest distance, shorter ones and single
    tokens; a table's first tokens plus the ends it leaves out are the unigrams. Patterns
    that are not pairs (0, d) are declined. A chunk's capped remaining tokens per start,
    made from where its documents end, are those of each document."""
    from l2m_jax.information import counting
    from l2m_jax.information.counting import _chunks, _document_edges, _first_tokens

    monkeypatch.setattr(counting, "_EDGES_GROUP", group)
    rng = np.random.default_rng(5)
    vocab_size, distances = 50, (1, 3, 4, 30, 64, 600)
    lengths = (200, 64, 65, 63, 1, 30, 31, 2, 500, 7)
    docs = [rng.integers(0, vocab_size, n).astype(np.int32) for n in lengths]
    chunk = next(_chunks(docs, vocab_size, np.uint32, 1 << 20, max(distances)))
    assert chunk.starts == sum(lengths) and chunk.ends.size == len(docs)  # one chunk
    unigrams = np.bincount(np.concatenate(docs), minlength=vocab_size)
    heads, tails = _document_edges(chunk, [(0, d) for d in distances], vocab_size)
    tables = count_pairs(docs, distances, vocab_size, progress=False).tables
    for k, d in enumerate(distances):
        pairs = [(doc[:-d], doc[d:]) for doc in docs if doc.size > d] or [([], [])]
        for got, part in ((unigrams - tails[k], 0), (unigrams - heads[k], 1)):
            tokens = np.concatenate([p[part] for p in pairs]).astype(np.intp)
            want = np.bincount(tokens, minlength=vocab_size)
            np.testing.assert_array_equal(got, want, err_msg=f"d={d}, token {part}")
        np.testing.assert_array_equal(_first_tokens(tables[k], vocab_size) + tails[k], unigrams)
    assert _document_edges(chunk, [(0, 1, 2)], vocab_size) is None
    for cap in (1, 64):
        want = np.concatenate([np.minimum(np.arange(n - 1, -1, -1), cap) for n in lengths])
        np.testing.assert_array_equal(chunk.remaining(cap, block=7), want)
