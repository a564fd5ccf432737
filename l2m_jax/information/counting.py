"""Exact n-gram and distance-d pair counts over token streams made of documents.

An event is a tuple of tokens at fixed offsets from a start position i inside one document:
(w_i, w_{i+d}) for a pair at distance d, (w_i, …, w_{i+n−1}) for an n-gram. Events never cross
a document boundary. Each kind of event is counted into a `CountTable`: its distinct keys
(the tuple packed in base V, first token most significant) in ascending order, and their
counts. Keys are uint32 while V^arity < 2^32 (V ≤ 65 535 for pairs) and uint64 otherwise, so
vocabularies up to 2^32 − 1 work for pairs.

The corpus streams through in chunks of `chunk_tokens` start positions (each chunk carries a
halo of the following tokens for the events that start near its end), so it never has to be
in memory at once: documents may come from any iterable. Each chunk's tables are merged into
running tables (sorted merges of (key, count) tables). Many distances share one pass.

Two implementations of the per-chunk count, chosen by `implementation`:
  "numpy"  host NumPy: sort of packed keys + run lengths, or a dense bincount when V^arity is
           small. The fastest exact count on CPU (XLA's CPU sort is ~4× slower than NumPy's).
  "xla"    jitted sort + run lengths, the chunk split across `devices` (all local devices by
           default) with `jax.shard_map`; each device counts its slice, the host merges.
  "auto"   "numpy" when JAX's default backend is the CPU, "xla" on GPU/TPU.
Both give identical tables. `two_point_mi` hands the host path a function of each finished
table (its estimate): where the corpus is one chunk, the estimates run in the same thread
pool while the other distances count (`_pipelined`), at most one at a time beside the sorts,
and each distance's first- and second-token marginals come from the documents' edges
(`_document_edges`) instead of a read of its table.

In a multi-process run (`jax.distributed`, one process per host) every process passes its
own documents and gets the tables of all of them: each counts its share on its own devices,
then the tables are summed across processes (the same counts as one process counting all).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from l2m_jax import distributed

__all__ = ["CountTable", "PairCounts", "count_ngrams", "count_pairs"]

IMPLEMENTATIONS = ("auto", "numpy", "xla")
_TAIL_SLICES = 4096  # documents per chunk up to which invalid starts are set by slices
_DENSE_LIMIT = 1 << 22  # dense bincount when V^arity is at most this (and ≤ the chunk)
_U32_SENTINEL = np.uint32(0xFFFFFFFF)  # sorts after every packed uint32 key (< 2^32 − 1)
_I32_SENTINEL = np.int32(np.iinfo(np.int32).max)  # sorts after every token id digit


class CountTable(NamedTuple):
    """Counts of the distinct keys of one kind of event.

    Attributes:
      keys: [M] uint32 or uint64, ascending and distinct; the event (t_0, …, t_{k−1})
        packed as Σ_j t_j · V^(k−1−j).
      counts: [M] positive; int32 while the table's total is below 2^31, else int64.
    """

    keys: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())


class PairCounts(NamedTuple):
    """Counts of ordered token pairs (w_i, w_{i+d}) within documents, for several distances.

    Attributes:
      distances: the distances d, ascending.
      vocab_size: V; a pair (a, b) has key a·V + b.
      tables: one `CountTable` per distance.
      unigrams: [V] int64, how often each token occurs.
      tokens: number of tokens counted.
      documents: number of non-empty documents.
    """

    distances: tuple[int, ...]
    vocab_size: int
    tables: tuple[CountTable, ...]
    unigrams: np.ndarray
    tokens: int
    documents: int


# ----------------------------------------------------------------------------- input handling


def _as_documents(tokens_or_docs) -> Iterable:
    """One array is one document ([T]) or a batch of documents ([B, T]); else an iterable."""
    if isinstance(tokens_or_docs, (np.ndarray, jax.Array)):
        arr = np.asarray(tokens_or_docs)
        if arr.ndim == 1:
            return [arr]
        if arr.ndim == 2:
            return list(arr)
        raise ValueError(
            f"tokens must be [T] (one document) or [B, T] (B documents), got shape {arr.shape}"
        )
    if isinstance(tokens_or_docs, (str, bytes)):
        raise TypeError("tokens_or_docs must hold integer token ids, not text; tokenize first")
    return tokens_or_docs


def _check_document(doc, vocab_size: int | None, index: int) -> np.ndarray:
    arr = np.asarray(doc)
    if arr.ndim != 1:
        raise ValueError(f"document {index} must be a 1-D array of token ids, got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"document {index} must hold integer token ids, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ValueError(f"document {index} holds a negative token id ({lo}); ids are ≥ 0")
        if vocab_size is not None and hi >= vocab_size:
            raise ValueError(
                f"document {index} holds token id {hi}, outside the vocabulary "
                f"(vocab_size={vocab_size}); pass the tokenizer's vocabulary size"
            )
    return arr


def _resolve(tokens_or_docs, vocab_size):
    """(documents, vocab_size, known total tokens or None); infers V from a materialised list."""
    docs = _as_documents(tokens_or_docs)
    if vocab_size is not None:
        if not isinstance(vocab_size, (int, np.integer)) or not 1 <= vocab_size < 2**32:
            raise ValueError(f"vocab_size must be an integer in [1, 2^32), got {vocab_size!r}")
        vocab_size = int(vocab_size)
    if isinstance(docs, Sequence):
        docs = [_check_document(d, vocab_size, i) for i, d in enumerate(docs)]
        total = sum(d.size for d in docs)
        if total == 0:
            raise ValueError("empty input: no tokens to count")
        if vocab_size is None:
            vocab_size = 1 + max(int(d.max()) for d in docs if d.size)
        return docs, vocab_size, total
    if vocab_size is None:
        raise ValueError(
            "vocab_size is required when documents come from an iterator (it cannot be "
            "inferred without a second pass); pass vocab_size=…"
        )
    return docs, vocab_size, None


def _key_dtype(vocab_size: int, arity: int):
    if vocab_size**arity < 0xFFFFFFFF:  # keys stay below the sentinel 2^32 − 1
        return np.uint32
    if vocab_size**arity < 0xFFFFFFFFFFFFFFFF:
        return np.uint64
    raise ValueError(
        f"{arity}-token events over vocab_size={vocab_size} need keys above 64 bits; "
        "use a smaller n"
    )


class _Chunk(NamedTuple):
    tokens: np.ndarray  # [starts + halo'] token ids (the key dtype)
    ends: np.ndarray  # int64, ascending: where each document that ends in `tokens` ends
    starts: int  # events start at positions [0, starts)

    def remaining(self, cap: int, block: int = 1 << 20) -> np.ndarray:
        """[starts] int32: the tokens after each start in its document, capped at `cap` (a
        document that does not end in `tokens` has at least halo' ≥ cap of them)."""
        ends = np.append(self.ends, self.starts + cap)
        out = np.empty(self.starts, np.int32)
        for lo in range(0, self.starts, block):  # in blocks: intp temporaries stay small
            position = np.arange(lo, min(lo + block, self.starts))
            following = ends[np.searchsorted(ends, position)]  # its document's last token
            np.minimum(following - position, cap, out=out[lo : lo + block], casting="unsafe")
        return out


def _joined(pieces: list[np.ndarray], dtype) -> np.ndarray:
    """The pieces end to end as `dtype` (ids are checked ≥ 0: the cast is exact); a view of
    a single piece of that dtype."""
    if len(pieces) == 1:
        return pieces[0].astype(dtype, copy=False)
    return np.concatenate(pieces, dtype=dtype, casting="unsafe")


def _chunks(
    docs: Iterable, vocab_size: int, key_dtype, chunk: int, halo: int, checked: bool = False
) -> Iterator:
    """Yields `_Chunk`s covering every start position once; returns (tokens, documents).
    `checked`: the documents passed `_check_document` already (a materialised list)."""
    buf_tok: list[np.ndarray] = []
    buf_end: list[int] = []  # where each buffered document ends, from the buffer's start
    size = tokens = documents = 0
    for i, doc in enumerate(docs):
        doc = doc if checked else _check_document(doc, vocab_size, i)
        n = doc.size
        if n == 0:
            continue
        tokens += n
        documents += 1
        buf_tok.append(doc)  # cast to the key dtype when joined
        size += n
        buf_end.append(size - 1)
        while size >= chunk + halo:
            tok = _joined(buf_tok, key_dtype)  # views when one piece (long docs)
            ends = np.array(buf_end, np.int64)
            yield _Chunk(tok[: chunk + halo], ends[ends < chunk + halo], chunk)
            buf_tok, buf_end, size = (
                [tok[chunk:]],
                (ends[ends >= chunk] - chunk).tolist(),
                size - chunk,
            )
    if size:  # the rest (< chunk + halo starts), padded so every offset slice is full
        tok = _joined([*buf_tok, np.zeros(halo, key_dtype)], key_dtype)
        ends = np.array(buf_end, np.int64)
        for lo in range(0, size, chunk):
            starts = min(chunk, size - lo)
            inside = ends[(ends >= lo) & (ends < lo + starts + halo)] - lo
            yield _Chunk(tok[lo : lo + starts + halo], inside, starts)
    if tokens == 0:
        raise ValueError("empty input: no tokens to count")
    return tokens, documents


# ---------------------------------------------------------------------------- table algebra


def _run_lengths(sorted_keys: np.ndarray, new: np.ndarray) -> CountTable:
    """Distinct keys and their run lengths; `new` is a bool scratch buffer ≥ size."""
    n = sorted_keys.size
    if n == 0:
        return CountTable(sorted_keys, np.zeros(0, np.int32))
    new = new[:n]
    new[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    counts = np.empty(starts.size, np.int32)  # < n ≤ 2^30
    np.subtract(starts[1:], starts[:-1], out=counts[:-1], casting="unsafe")
    counts[-1] = n - starts[-1]
    return CountTable(sorted_keys[starts], counts)


def _add_unigrams(unigrams: np.ndarray, ids: np.ndarray, block: int = 1 << 18) -> None:
    """unigrams += the histogram of `ids`, in blocks: bincount wants intp ids, and a small
    reused intp buffer costs half of converting the whole chunk at once."""
    buf = np.empty(min(block, ids.size), np.intp)
    for lo in range(0, ids.size, block):
        part = ids[lo : lo + block]
        np.copyto(buf[: part.size], part, casting="unsafe")  # ids < V < 2^32
        unigrams += np.bincount(buf[: part.size], minlength=unigrams.size)


def _count_dtype(total: int):
    """int32 counts while they cannot overflow (total < 2^31), else int64."""
    return np.int32 if total < 2**31 else np.int64


def _merge(tables: list[CountTable]) -> CountTable:
    """Sum of count tables (union of keys, counts added)."""
    tables = [t for t in tables if t.keys.size]
    if len(tables) <= 1:
        return tables[0] if tables else CountTable(np.zeros(0, np.uint32), np.zeros(0, np.int32))
    dtype = _count_dtype(sum(int(t.counts.sum()) for t in tables))
    keys = np.concatenate([t.keys for t in tables])
    counts = np.concatenate([t.counts for t in tables]).astype(dtype, copy=False)
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return CountTable(keys[starts], np.add.reduceat(counts, starts, dtype=dtype))


class _Accumulator:
    """Running table; chunk tables are merged once they outweigh it (amortised O(log))."""

    def __init__(self):
        self.table = CountTable(np.zeros(0, np.uint32), np.zeros(0, np.int32))
        self.pending: list[CountTable] = []
        self.pending_size = 0

    def add(self, table: CountTable) -> None:
        self.pending.append(table)
        self.pending_size += table.keys.size
        if self.pending_size >= self.table.keys.size:
            self.flush()

    def flush(self) -> CountTable:
        if self.pending:
            self.table = _merge([self.table, *self.pending])
            self.pending, self.pending_size = [], 0
        return self.table


# ------------------------------------------------------------------------ per-chunk counting


def _host_workers() -> int:
    """Threads for the host path: NumPy's sort and ufuncs release the GIL."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _fill_tails(key: np.ndarray, ends: np.ndarray, last: int, value) -> int:
    """key[i] = value at every start i whose event (last offset `last`) passes the end of its
    document: the last `last` starts of each document, the documents ending at `ends`
    (ascending). One slice per document; returns how many starts were filled."""
    lo = np.maximum(ends - (last - 1), np.concatenate(([0], ends[:-1] + 1)))
    hi = np.minimum(ends + 1, key.size)
    keep = lo < hi
    lo, hi = lo[keep], hi[keep]
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        key[a:b] = value
    return int((hi - lo).sum())


def _numpy_tables(chunk: _Chunk, patterns, vocab_size: int, then=None) -> list:
    """Counts a chunk on the host, patterns spread over threads; each reuses its buffers.
    With `then`, returns (table, then(k, table)) per pattern k, run as in `_pipelined`."""
    n, dtype = chunk.starts, chunk.tokens.dtype
    base, sentinel = dtype.type(vocab_size), np.iinfo(dtype).max
    heads = {first for first, *_ in patterns if len(patterns) > 1}
    head = {f: chunk.tokens[f : f + n] * base for f in heads}  # t0·V, shared by pairs
    ends, remaining = chunk.ends, None  # where each document ends
    if ends.size > _TAIL_SLICES:  # many documents: mask the invalid starts instead
        ends, remaining = None, chunk.remaining(max(p[-1] for p in patterns))
    scratch = threading.local()

    def one(offsets) -> CountTable:
        if not hasattr(scratch, "key"):
            scratch.key, scratch.new = np.empty(n, dtype), np.empty(n, bool)
            scratch.invalid = np.empty(n, bool) if ends is None else None
        key = scratch.key
        first, *rest = offsets  # key = (…(t0·V + t1)·V + t2)…, in place
        if not rest:
            np.copyto(key, chunk.tokens[first : first + n])
        elif first in head:
            np.add(head[first], chunk.tokens[rest[0] : rest[0] + n], out=key)
        else:
            np.multiply(chunk.tokens[first : first + n], base, out=key)
            key += chunk.tokens[rest[0] : rest[0] + n]
        for off in rest[1:]:
            key *= base
            key += chunk.tokens[off : off + n]
        # starts whose event passes its document's end get bin `space` (dense bincount) or
        # the sentinel (it sorts after every key)
        space = vocab_size ** len(offsets)
        dense = space <= min(_DENSE_LIMIT, max(n, 1 << 12))
        fill = dtype.type(space) if dense else sentinel
        if ends is None:
            np.less(remaining, offsets[-1], out=scratch.invalid)
            np.copyto(key, fill, where=scratch.invalid)
            dropped = int(np.count_nonzero(scratch.invalid))
        else:
            dropped = _fill_tails(key, ends, offsets[-1], fill)
        if dense:
            counts = np.bincount(key, minlength=space + 1)[:space]
            nz = np.flatnonzero(counts)
            return CountTable(nz.astype(dtype), counts[nz].astype(np.int32))
        key.sort()  # in place; the sentinels sort to the end
        return _run_lengths(key[: n - dropped], scratch.new)

    workers = min(len(patterns), _host_workers())
    if then is not None:
        count = lambda k: one(patterns[k])
        if workers == 1 or n < 1 << 16:
            return [(t, then(k, t)) for k, t in enumerate(map(count, range(len(patterns))))]
        return _pipelined(count, then, len(patterns), workers)
    if workers == 1 or n < 1 << 16:
        return [one(p) for p in patterns]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, patterns))


def _after_unigrams(then, unigrams: np.ndarray, chunk: _Chunk, patterns):
    """`then(unigrams, first, second)` as a function of (k, table), made on its first call
    once the chunk's unigrams are added: in a worker, beside the first counts, not before
    them. For pairs, `first` and `second` are [K, V] histograms of the pairs' first and second
    tokens at each distance (the unigrams less `_document_edges`; else None), and the
    unigrams are the first tokens of that first table plus the document ends it leaves out
    (cheaper than a histogram of the chunk)."""
    lock, made = threading.Lock(), []

    def fn(k, table):
        with lock:
            if not made:
                edges = _document_edges(chunk, patterns, unigrams.size)
                if edges is None:
                    _add_unigrams(unigrams, chunk.tokens[: chunk.starts])
                    made.append(then(unigrams, None, None))
                else:
                    heads, tails = edges
                    np.add(unigrams, _first_tokens(table, unigrams.size) + tails[k], out=unigrams)
                    first = np.subtract(unigrams, tails, out=tails)
                    made.append(then(unigrams, first, np.subtract(unigrams, heads, out=heads)))
        return made[0](k, table)

    return fn


def _first_tokens(table: CountTable, vocab: int) -> np.ndarray:
    """[V] int64: how often each token is the first of a pair of `table` (its sorted keys
    hold the first token in runs)."""
    out = np.zeros(vocab, np.int64)
    if table.keys.size:
        first = table.keys // table.keys.dtype.type(vocab)
        runs = np.concatenate(([0], np.flatnonzero(first[1:] != first[:-1]) + 1))
        out[first[runs]] = np.add.reduceat(table.counts, runs, dtype=np.int64)
    return out


_EDGES_LIMIT = 1 << 24  # entries of each [K, V] table `_document_edges` makes
_EDGES_GROUP = 1 << 22  # tokens of short documents `_document_edges` takes at a time


def _document_edges(chunk: _Chunk, patterns, vocab: int):
    """(heads, tails), [K, V] int64: histograms of the first d_k and of the last d_k tokens of
    every document, for pair patterns (0, d_k) ascending over a chunk that holds whole
    documents; None for other patterns or when the tables would be large.

    At distance d no pair starts at one of the last d tokens of a document and none ends at
    one of its first d, so the pairs' marginals are the unigrams less these. Each edge token
    is counted once, in the band of distances that first take it in (offset p from the start
    or the end: the d_k > p), and the bands are summed up."""
    distances = np.array([p[-1] for p in patterns])
    if any(len(p) != 2 or p[0] != 0 for p in patterns) or distances.size * vocab > _EDGES_LIMIT:
        return None
    tokens, halo = chunk.tokens[: chunk.starts], int(distances[-1])
    ends = chunk.ends  # one chunk: every document ends among its starts
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    bands = np.concatenate(([0], distances))  # offsets bands[k] ≤ p < bands[k + 1]: band k
    heads, tails = (np.zeros((distances.size, vocab), np.int64) for _ in range(2))
    full = lengths >= halo
    if full.any():  # [documents, halo] windows; column p: offset p from the start / the end
        window = np.lib.stride_tricks.sliding_window_view(tokens, halo)
        for out, first_rows, last in ((heads, starts, False), (tails, ends - (halo - 1), True)):
            block = window[first_rows[full]]
            block = block[:, ::-1] if last else block
            for k in range(distances.size):
                band = block[:, bands[k] : bands[k + 1]].ravel()
                out[k] = np.bincount(band, minlength=vocab)
    short = np.flatnonzero(~full)  # shorter documents: every token lies in both edges
    band_of = np.searchsorted(distances, np.arange(halo), side="right") * vocab
    group = np.cumsum(lengths[short]) // _EDGES_GROUP  # a few million tokens at a time
    for part in np.split(short, np.flatnonzero(np.diff(group)) + 1) if short.size else ():
        size = lengths[part]
        offset = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
        ids = tokens[np.repeat(starts[part], size) + offset].astype(np.intp)
        for out, p in ((heads, offset), (tails, np.repeat(size - 1, size) - offset)):
            ids_in_band = band_of[p] + ids  # k·V + token: one histogram for every band
            out += np.bincount(ids_in_band, minlength=out.size).reshape(out.shape)
    for k in range(1, distances.size):  # the edges at d_k: bands 0…k
        heads[k] += heads[k - 1]
        tails[k] += tails[k - 1]
    return heads, tails


def _pipelined(count, then, n: int, workers: int) -> list:
    """[(t_k, then(k, t_k)) for k < n] with t_k = count(k), on `workers` threads. While counts
    remain, at most one thread runs `then`: a count (a sort) is compute-bound and the
    estimates that follow it memory-bound, so one of each side by side beats two of either."""
    out: list = [None] * n
    lock = threading.Lock()
    todo = list(range(n - 1, -1, -1))  # popped from the end: in order
    ready: list = []  # (k, table): counted, waiting for `then`
    busy = 0  # threads in `then`

    def worker():
        nonlocal busy
        while True:
            with lock:
                if ready and (busy == 0 or not todo):
                    k, table = ready.pop(0)
                    busy += 1
                elif todo:
                    k, table = todo.pop(), None
                else:
                    return
            if table is None:
                table = count(k)
                with lock:
                    ready.append((k, table))
                continue
            try:
                out[k] = (table, then(k, table))
            finally:
                with lock:
                    busy -= 1

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    return out


def _xla_shard(tok_1xW, rem_1xW, offsets_KxA, *, starts: int, vocab_size: int, packed: bool):
    """Counts one device's slice: sorted distinct keys, their counts, and the number of them."""
    tok_W, rem_W = tok_1xW[0], rem_1xW[0]
    arity = offsets_KxA.shape[1]

    def one(offsets_A):
        digits = [jax.lax.dynamic_slice(tok_W, (offsets_A[j],), (starts,)) for j in range(arity)]
        valid_S = rem_W[:starts] >= offsets_A[arity - 1]
        if packed:
            key_S = digits[0].astype(jnp.uint32)
            for d in digits[1:]:
                key_S = key_S * jnp.uint32(vocab_size) + d.astype(jnp.uint32)
            keys = (jnp.sort(jnp.where(valid_S, key_S, _U32_SENTINEL)),)
        else:
            masked = [jnp.where(valid_S, d, _I32_SENTINEL) for d in digits]
            keys = tuple(jax.lax.sort(masked, num_keys=arity))
        change_S = functools.reduce(jnp.logical_or, [k[1:] != k[:-1] for k in keys])
        new_S = jnp.concatenate([jnp.ones((1,), bool), change_S])
        first_S = jnp.nonzero(new_S, size=starts, fill_value=starts)[0]
        counts_S = jnp.diff(first_S, append=jnp.full((1,), starts, first_S.dtype))
        uniq = tuple(k[jnp.minimum(first_S, starts - 1)] for k in keys)
        runs = new_S.sum() - (valid_S.sum() < starts)  # the sentinel run is last: drop it
        return uniq, counts_S.astype(jnp.int32), runs.astype(jnp.int32)

    uniq, counts_KxS, runs_K = jax.vmap(one)(offsets_KxA)
    return tuple(u[None] for u in uniq), counts_KxS[None], runs_K[None]


@functools.lru_cache(maxsize=16)
def _xla_counter(devices: tuple, starts: int, vocab_size: int, arity: int, packed: bool):
    mesh = jax.sharding.Mesh(np.array(devices), ("shard",))
    body = functools.partial(_xla_shard, starts=starts, vocab_size=vocab_size, packed=packed)
    keys_spec = (P("shard"),) * (1 if packed else arity)
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P("shard"), P("shard"), P()),
        out_specs=(keys_spec, P("shard"), P("shard")),
    )
    return jax.jit(fn), NamedSharding(mesh, P("shard"))


def _xla_tables(chunk: _Chunk, patterns, vocab_size, devices, per_device, halo, key_dtype):
    """Counts a chunk on the devices: each gets `per_device` starts plus a halo of tokens."""
    shards, arity = len(devices), len(patterns[0])
    packed = key_dtype == np.uint32
    width = per_device + halo
    tok_SxW = np.zeros((shards, width), np.uint32 if packed else np.int32)
    rem_SxW = np.full((shards, width), -1, np.int32)  # -1: not a start of this chunk
    remaining = chunk.remaining(halo)
    for s in range(shards):
        lo = s * per_device
        hi = min(lo + width, chunk.tokens.size)
        if lo >= chunk.starts:
            break
        tok_SxW[s, : hi - lo] = chunk.tokens[lo:hi]
        mine = remaining[lo : min(hi, chunk.starts)]  # starts beyond the chunk belong to the next
        rem_SxW[s, : mine.size] = mine
    fn, sharding = _xla_counter(tuple(devices), per_device, vocab_size, arity, packed)
    offsets_KxA = np.asarray(patterns, np.int32)
    uniq, counts_SxKxN, runs_SxK = jax.device_get(
        fn(jax.device_put(tok_SxW, sharding), jax.device_put(rem_SxW, sharding), offsets_KxA)
    )
    out = []
    for k in range(len(patterns)):
        parts = []
        for s in range(shards):
            m = int(runs_SxK[s, k])
            if packed:
                keys = uniq[0][s, k, :m].astype(np.uint32)
            else:
                keys = np.zeros(m, np.uint64)
                for digit in uniq:
                    keys = keys * np.uint64(vocab_size) + digit[s, k, :m].astype(np.uint64)
            parts.append(CountTable(keys, counts_SxKxN[s, k, :m]))
        out.append(_merge(parts))
    return out


# ------------------------------------------------------------------------------ entry points


def _count(tokens_or_docs, patterns, vocab_size, **options):
    """`_count_local` on this process's documents; in a multi-process run (`jax.distributed`)
    the tables, unigrams and totals are summed over every process's documents."""
    distributed.initialize()
    if jax.process_count() == 1:
        return _count_local(tokens_or_docs, patterns, vocab_size, **options)
    with distributed.agreed_errors():  # one process's bad input stops all of them
        docs, vocab, _ = _resolve(tokens_or_docs, vocab_size)
    if vocab_size is None:  # inferred: the largest id of any process
        vocab = int(np.concatenate(distributed.gather_arrays(np.array([vocab]))).max())
    options["then"] = None  # the tables change once summed over the processes
    with distributed.agreed_errors():
        tables, _, unigrams, tokens, documents, _ = _count_local(docs, patterns, vocab, **options)
    key_dtype = _key_dtype(vocab, len(patterns[0]))
    tables, unigrams, tokens, documents = _across_processes(
        tables, unigrams, tokens, documents, key_dtype
    )
    return tables, vocab, unigrams, tokens, documents, None


def _across_processes(tables, unigrams, tokens: int, documents: int, key_dtype):
    """Count tables, unigrams and totals summed over the processes (the same on each)."""
    merged = []
    for table in tables:
        keys = distributed.gather_arrays(table.keys.astype(key_dtype, copy=False))
        counts = distributed.gather_arrays(table.counts.astype(np.int64, copy=False))
        t = _merge([CountTable(k, c) for k, c in zip(keys, counts, strict=True)])
        dtype = _count_dtype(t.total)
        merged.append(CountTable(t.keys.astype(key_dtype, copy=False), t.counts.astype(dtype)))
    totals = distributed.sum_arrays(np.array([tokens, documents], np.int64))
    return tuple(merged), distributed.sum_arrays(unigrams), int(totals[0]), int(totals[1])


def sum_pair_counts(counts: PairCounts) -> PairCounts:
    """Pair counts summed over the processes of a multi-process run (`jax.distributed`); for
    counts made without `count_pairs`, which sums by itself. One process: `counts` as is."""
    if jax.process_count() == 1:
        return counts
    tables, unigrams, tokens, documents = _across_processes(
        counts.tables,
        counts.unigrams,
        counts.tokens,
        counts.documents,
        _key_dtype(counts.vocab_size, 2),
    )
    return counts._replace(tables=tables, unigrams=unigrams, tokens=tokens, documents=documents)


def _count_local(
    tokens_or_docs,
    patterns,
    vocab_size,
    *,
    chunk_tokens,
    implementation,
    devices,
    progress,
    then=None,
):
    """(tables, V, unigrams, tokens, documents, results): `then`, if given, makes from the
    unigrams and the pairs' marginals (`_after_unigrams`; None where not made) a function of
    (pattern index, its final table), and results are its values per pattern, computed while
    the other patterns count where the input is one host chunk (else None)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        implementation = "numpy" if jax.default_backend() == "cpu" else "xla"
    if not isinstance(chunk_tokens, (int, np.integer)) or not 1 <= chunk_tokens <= 2**30:
        raise ValueError(f"chunk_tokens must be an integer in [1, 2^30], got {chunk_tokens!r}")
    docs, vocab_size, total = _resolve(tokens_or_docs, vocab_size)
    arity = len(patterns[0])
    key_dtype = _key_dtype(vocab_size, arity)
    halo = max(p[-1] for p in patterns)
    if implementation == "xla":
        devices = list(jax.local_devices() if devices is None else devices)
        if not devices:
            raise ValueError("devices is empty; pass None (all local devices) or a list")
        if key_dtype != np.uint32 and vocab_size > _I32_SENTINEL:
            raise ValueError(
                f'implementation="xla" handles vocab_size < 2^31, got {vocab_size}; use "numpy"'
            )
        per_device = -(-int(chunk_tokens) // len(devices))
        if total is not None:  # a small input gets a small (power-of-two) chunk
            per_device = min(per_device, 1 << (-(-total // len(devices)) - 1).bit_length())
        halo = 1 << max(halo - 1, 0).bit_length()  # few distinct shapes to compile
        chunk_tokens = per_device * len(devices)
    accumulators = [_Accumulator() for _ in patterns]
    unigrams = np.zeros(vocab_size, np.int64)
    results = None
    one_chunk = then is not None and total is not None and total <= chunk_tokens

    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="tok", unit_scale=True, delay=2.0, disable=not progress)
    stream = _chunks(docs, vocab_size, key_dtype, int(chunk_tokens), halo, total is not None)
    while True:
        try:
            chunk = next(stream)
        except StopIteration as stop:
            tokens, documents = stop.value
            break
        if implementation == "numpy" and one_chunk:  # the unigrams and tables are final
            then_fn = _after_unigrams(then, unigrams, chunk, patterns)
            pairs = _numpy_tables(chunk, patterns, vocab_size, then_fn)
            tables, results = [t for t, _ in pairs], [r for _, r in pairs]
        else:
            _add_unigrams(unigrams, chunk.tokens[: chunk.starts])
            if implementation == "numpy":
                tables = _numpy_tables(chunk, patterns, vocab_size)
            else:
                tables = _xla_tables(
                    chunk, patterns, vocab_size, devices, per_device, halo, key_dtype
                )
        for acc, table in zip(accumulators, tables, strict=True):
            acc.add(table)
        bar.update(chunk.starts)
    bar.close()
    tables = tuple(
        CountTable(t.keys.astype(key_dtype, copy=False), t.counts)
        for t in (acc.flush() for acc in accumulators)
    )
    return tables, vocab_size, unigrams, tokens, documents, results


def _check_distances(distances) -> tuple[int, ...]:
    ds = np.atleast_1d(np.asarray(distances))
    if ds.size == 0:
        raise ValueError("distances is empty; pass at least one distance d ≥ 1")
    if not np.issubdtype(ds.dtype, np.integer) or ds.ndim != 1:
        raise ValueError(f"distances must be a 1-D list of integers, got {distances!r}")
    if ds.min() < 1:
        raise ValueError(f"distances must be ≥ 1, got {int(ds.min())}")
    if np.unique(ds).size != ds.size:
        raise ValueError(f"distances must be distinct, got {ds.tolist()}")
    return tuple(sorted(int(d) for d in ds))


def count_pairs(
    tokens_or_docs,
    distances,
    vocab_size: int | None = None,
    *,
    chunk_tokens: int = 1 << 24,
    implementation: str = "auto",
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
) -> PairCounts:
    """Counts ordered pairs (w_i, w_{i+d}) inside documents for every distance, in one pass.

    Args:
      tokens_or_docs: [T] int array (one document), [B, T] (B documents), a list of 1-D
        arrays, or any iterable of them (streamed; then `vocab_size` is required).
      distances: distinct integers d ≥ 1.
      vocab_size: V; token ids must lie in [0, V). Inferred as max id + 1 if None.
      chunk_tokens: start positions per chunk. Memory: about 8 bytes per chunk token (12
        when a chunk holds more than 4096 documents) plus 6 per token and thread (host path)
        for the working buffers, and 8 bytes per distinct pair (key + count) for each
        distance's table.
      implementation: "auto", "numpy" or "xla" (see the module docstring).
      devices: devices the "xla" path shards each chunk over (default: all local devices).
      progress: show a progress bar for runs longer than 2 s.
    """
    return _count_pairs(
        tokens_or_docs,
        distances,
        vocab_size,
        chunk_tokens=chunk_tokens,
        implementation=implementation,
        devices=devices,
        progress=progress,
    )[0]


def _count_pairs(tokens_or_docs, distances, vocab_size, **options) -> tuple[PairCounts, list]:
    """`count_pairs` and the results of `then` (see `_count_local`; None where not run)."""
    distances = _check_distances(distances)
    tables, vocab_size, unigrams, tokens, documents, results = _count(
        tokens_or_docs, [(0, d) for d in distances], vocab_size, **options
    )
    return PairCounts(distances, vocab_size, tables, unigrams, tokens, documents), results


def count_ngrams(
    tokens_or_docs,
    n: int,
    vocab_size: int | None = None,
    *,
    chunk_tokens: int = 1 << 24,
    implementation: str = "auto",
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
) -> CountTable:
    """Counts the n-grams (w_i, …, w_{i+n−1}) inside documents; keys packed in base V.

    Arguments as for `count_pairs`; `n` ≥ 1 with V^n < 2^64.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    (table,), *_ = _count(
        tokens_or_docs,
        [tuple(range(int(n)))],
        vocab_size,
        chunk_tokens=chunk_tokens,
        implementation=implementation,
        devices=devices,
        progress=progress,
    )
    return table
