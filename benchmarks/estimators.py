"""Two-point MI on the SWORD corpus, and pair counting, against pure-Python Counters.

    python -m benchmarks.estimators [--part sword|zipf|all] [--json PATH]

Part "sword" (the real corpus: 6.2M GPT-2 tokens in 430 books, 13 distances 1..4096):
  counter-loop     the official form, a pure-Python `Counter` update per pair over the whole
                   corpus (one run: it takes about a minute and several GB)
  two_point_mi     the whole call with surrogate=None, the same counting plus the entropies,
                   standard errors and fits: best of --repeats, and split into its steps
                   (count_pairs; two_point_estimates; the fits)
  default call     two_point_mi with its defaults (4 within-document shuffles), per token
                   counted (5 passes over the corpus)
It reports the speed-up per token of the whole call over the Counter, the target being 100×.
Measured on the 2-core development machine, quiet (load < 1.1), nine runs in one session:
counter-loop 72–87 s, whole call 0.48–0.69 s, 124–173× (wall; 105–155× on the median of
each run's three calls); the CPU-time ratio is 66–85× (the call keeps both cores busy). Best
steps: count_pairs 0.38–0.51 s, two_point_estimates 0.22–0.29 s, default call 3.2–4.2 s.
The machine's speed drifts by ±15 % from minute to minute, which moves the 0.5 s call more
than the Counter.
Needs the Debian sword-* packages and the GPT-2 tokenizer asset (`l2m two-point --corpus sword`
tokenizes and caches the corpus on first use, about a minute).

Part "zipf" (counting only):

Data: synthetic Zipf-like tokens (p(rank r) ∝ 1/(r + 2.7), V = 50 257 as GPT-2), iid, cut
into documents of about 13k tokens (the SWORD corpus averages 12.9k). They have no long-range
structure, so the pair tables are about as large as they get: a worst case for counting.

Counts ordered pairs at 13 distances (1, 2, 4, …, 4096) in one pass:
  counter-loop  the straightforward pure-Python count: for each document and distance,
                `counter[seq[i], seq[i + d]] += 1` over i (a `collections.Counter` per d)
  counter-zip   the same counts with `Counter.update(zip(seq, seq[d:]))`, whose loop runs in
                C: the stronger baseline. Both on a --baseline-tokens subset, and their tables
                are checked equal to `count_pairs` on that subset
  numpy         `count_pairs(implementation="numpy")`, the CPU default, on all tokens
  xla           `count_pairs(implementation="xla")` (jitted sort, sharded over local
                devices), on --xla-tokens (the compile is reported apart)
Reports the best of --repeats interleaved runs (load on a shared machine only slows a run
down), in wall time and in CPU time of the process (robust to other load; sums all threads),
per token, the speed-up over each Counter per token, and peak memory: traced NumPy
allocations of the counting call (tracemalloc) and the process's peak RSS.

The Counter's cost per token grows with the subset (its dicts outgrow the caches; measured
here: 2.4, 4.2 and 6.1 µs of CPU per token at 0.1M, 0.4M and 1M tokens for counter-zip), so
a subset understates its cost on a whole corpus. The default subset is 3M tokens (30% of the
counted corpus; about 10 µs per token for the loop), which keeps a default run near 4 minutes.
"""

from __future__ import annotations

import argparse
import collections
import platform
import resource
import time
import tracemalloc

import jax
import numpy as np

from l2m_jax.experiments._common import print_table, write_json
from l2m_jax.information import count_pairs

VOCAB = 50_257
DISTANCES = tuple(2**k for k in range(13))  # 1 … 4096


def zipf_documents(tokens: int, seed: int = 0, mean_doc: int = 13_000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(VOCAB) + 2.7)
    ids = rng.choice(VOCAB, size=tokens, p=p / p.sum()).astype(np.int32)
    cuts = np.sort(
        rng.choice(np.arange(1, tokens), size=max(tokens // mean_doc - 1, 0), replace=False)
    )
    return np.split(ids, cuts)


def counter_loop(docs, distances) -> list[collections.Counter]:
    """The straightforward pure-Python count: one Counter of (a, b) tuples per distance."""
    out = [collections.Counter() for _ in distances]
    for doc in docs:
        seq = doc.tolist()
        for counter, d in zip(out, distances, strict=True):
            for i in range(len(seq) - d):
                counter[seq[i], seq[i + d]] += 1
    return out


def counter_zip(docs, distances) -> list[collections.Counter]:
    """The same counts with the C-accelerated `Counter.update` over zipped sequences."""
    out = [collections.Counter() for _ in distances]
    for doc in docs:
        seq = doc.tolist()
        for counter, d in zip(out, distances, strict=True):
            counter.update(zip(seq, seq[d:], strict=False))
    return out


def _subset(docs, tokens: int) -> list[np.ndarray]:
    out, left = [], tokens
    for doc in docs:
        if left <= 0:
            break
        out.append(doc[:left])
        left -= out[-1].size
    return out


def _same_counts(counters, pair_counts) -> bool:
    for counter, table in zip(counters, pair_counts.tables, strict=True):
        ref = {a * VOCAB + b: n for (a, b), n in counter.items()}
        if dict(zip(table.keys.tolist(), table.counts.tolist(), strict=True)) != ref:
            return False
    return True


def _timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def _traced_peak(fn, *args) -> int:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def counter_one_distance_at_a_time(docs, distances) -> bool:
    """`counter_loop`'s work, one distance at a time (a whole corpus's 13 Counters at once
    would hold several GB); returns whether the d = distances[0] table was kept for checking."""
    seqs = [doc.tolist() for doc in docs]
    for d in distances:
        counter = collections.Counter()
        for seq in seqs:
            for i in range(len(seq) - d):
                counter[seq[i], seq[i + d]] += 1
        if d == distances[0]:
            first = counter
        del counter
    return first


def sword_part(args) -> dict:
    """two_point_mi on SWORD against the pure-Python Counter over the same corpus."""
    from l2m_jax.information import two_point_estimates, two_point_mi
    from l2m_jax.sources.text import load_corpus
    from l2m_jax.sources.tokenize import get_tokenizer

    tokenizer = get_tokenizer("gpt2")
    docs = load_corpus("sword", tokenizer=tokenizer)
    vocab, tokens = tokenizer.vocab_size, sum(d.size for d in docs)
    print(
        f"SWORD: {tokens:,} GPT-2 tokens in {len(docs)} documents, {len(DISTANCES)} distances "
        f"{DISTANCES[0]}..{DISTANCES[-1]}; {_host_note()}"
    )

    def whole():
        return two_point_mi(docs, DISTANCES, vocab, surrogate=None, progress=False)

    def counting():
        return count_pairs(docs, DISTANCES, vocab, progress=False)

    def default():
        return two_point_mi(docs, DISTANCES, vocab, progress=False)

    whole()  # warm-up: imports, thread pools, page faults
    runs = {"whole": [], "count": [], "estimates": []}
    for _ in range(args.repeats):
        runs["whole"].append(_timed(whole))
        t0, c0 = time.perf_counter(), time.process_time()
        counts = counting()
        runs["count"].append((time.perf_counter() - t0, time.process_time() - c0))
        runs["estimates"].append(_timed(two_point_estimates, counts))
        del counts
    runs["default"] = [_timed(default)]
    t0, c0 = time.perf_counter(), time.process_time()
    first = counter_one_distance_at_a_time(docs, DISTANCES)
    runs["counter-loop"] = [(time.perf_counter() - t0, time.process_time() - c0)]
    table = count_pairs(docs, DISTANCES[:1], vocab, progress=False).tables[0]
    same = dict(zip(table.keys.tolist(), table.counts.tolist(), strict=True)) == {
        a * vocab + b: n for (a, b), n in first.items()
    }
    del first
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in runs.items()}
    base_wall, base_cpu = best["counter-loop"]
    counted = {"default": tokens * 5}
    rows = []
    for name in ("counter-loop", "whole", "count", "estimates", "default"):
        wall, cpu = best[name]
        n = counted.get(name, tokens)
        rows.append([name, f"{n:,}", wall, wall / n * 1e9, cpu / n * 1e9,
                     base_wall / tokens / (wall / n), base_cpu / tokens / (cpu / n)])  # fmt: skip
    print_table(
        [
            "step",
            "tokens",
            "best wall s",
            "wall ns/tok",
            "CPU ns/tok",
            "× loop (wall)",
            "× loop (CPU)",
        ],
        rows,
    )
    w_wall, w_cpu = best["whole"]
    print(
        f"two_point_mi (surrogate=None) vs the pure-Python Counter per token: "
        f"{base_wall / w_wall:.0f}× (wall), {base_cpu / w_cpu:.0f}× (CPU time); target ≥ 100×. "
        f"Entropies + stderrs: {best['estimates'][0] / best['count'][0]:.2f}× the counting "
        f"time. Counter table equal at d = 1: {same}"
    )
    return {
        "tokens": tokens,
        "documents": len(docs),
        "distances": DISTANCES,
        "runs_wall_cpu_s": runs,
        "speedup_whole_call_vs_counter_loop_wall": base_wall / w_wall,
        "speedup_whole_call_vs_counter_loop_cpu": base_cpu / w_cpu,
        "estimates_over_counting_wall": best["estimates"][0] / best["count"][0],
        "counter_table_equal_at_d1": same,
    }


def _host_note() -> str:
    return f"backend {jax.default_backend()}, {len(jax.local_devices())} device(s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["sword", "zipf", "all"], default="all")
    parser.add_argument("--tokens", type=int, default=10_000_000, help="tokens for numpy")
    parser.add_argument("--baseline-tokens", type=int, default=3_000_000, help="Counter subset")
    parser.add_argument("--xla-tokens", type=int, default=2_000_000, help="tokens for xla")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best one counts)")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    results, ok = {}, True
    if args.part in ("sword", "all"):
        results["sword"] = sword_part(args)
        ok &= results["sword"]["counter_table_equal_at_d1"]
    if args.part in ("zipf", "all"):
        results["zipf"] = zipf_part(args)
        ok &= results["zipf"]["counts_identical"]
    results["machine"] = platform.processor() or platform.machine()
    if args.json:
        print(f"wrote {write_json(args.json, results)}")
    return 0 if ok else 1


def zipf_part(args) -> dict:
    """Counting on synthetic Zipf-like tokens against the Counters on a subset."""
    docs = zipf_documents(args.tokens)
    print(
        f"{args.tokens:,} Zipf-like tokens (V = {VOCAB}), {len(docs)} documents, "
        f"{len(DISTANCES)} distances {DISTANCES[0]}..{DISTANCES[-1]}; "
        f"backend {jax.default_backend()}, {len(jax.local_devices())} device(s)"
    )
    rows, results = [], {}

    def numpy_count(d):
        return count_pairs(d, DISTANCES, VOCAB, implementation="numpy", progress=False)

    def xla_count(d):
        counts = count_pairs(d, DISTANCES, VOCAB, implementation="xla", progress=False)
        return counts.tables[-1].counts  # a host array; the device work is finished

    # Peak RSS of the data plus one NumPy count, before the Counter's dicts inflate it.
    baselines = {"counter-loop": counter_loop, "counter-zip": counter_zip}
    runs = {name: [] for name in baselines}
    runs["numpy"] = [_timed(numpy_count, docs)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    # Interleaved runs, best of --repeats for each path: the fairest figure on a shared machine.
    base_docs = _subset(docs, args.baseline_tokens)
    same = True
    for r in range(args.repeats):
        for name, fn in baselines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            counters = fn(base_docs, DISTANCES)
            runs[name].append((time.perf_counter() - t0, time.process_time() - c0))
            if r == args.repeats - 1:
                same &= _same_counts(counters, numpy_count(base_docs))
            del counters
        if r:
            runs["numpy"].append(_timed(numpy_count, docs))
    numpy_peak = _traced_peak(numpy_count, docs)
    xla_docs = _subset(docs, args.xla_tokens)
    xla_first = _timed(xla_count, xla_docs)[0]  # trace + compile + one run
    runs["xla"] = [_timed(xla_count, xla_docs) for _ in range(2)]
    xla_compile = max(xla_first - min(w for w, _ in runs["xla"]), 0.0)

    tokens = {name: args.baseline_tokens for name in baselines}
    tokens.update(numpy=args.tokens, xla=args.xla_tokens)
    per_token = {
        name: (min(w for w, _ in rs) / tokens[name], min(c for _, c in rs) / tokens[name])
        for name, rs in runs.items()
    }
    base_wall, base_cpu = per_token["counter-loop"]
    for name, (wall, cpu) in per_token.items():
        rows.append([name, f"{tokens[name]:,}", wall * tokens[name], wall * 1e9, cpu * 1e9,
                     base_wall / wall, base_cpu / cpu])  # fmt: skip
        results[name] = {
            "tokens": tokens[name],
            "runs_wall_cpu_s": runs[name],
            "wall_s_per_token": wall,
            "cpu_s_per_token": cpu,
        }
    results["numpy"]["peak_traced_bytes"] = numpy_peak
    results["xla"]["compile_s"] = xla_compile
    headers = ["path", "tokens", "best wall s", "wall ns/tok", "CPU ns/tok", "× loop (wall)"]
    print_table([*headers, "× loop (CPU)"], rows)
    (n_wall, n_cpu), (x_wall, x_cpu) = per_token["numpy"], per_token["xla"]
    zip_wall, zip_cpu = per_token["counter-zip"]
    print(
        f"numpy vs the pure-Python Counter loop per token: {base_wall / n_wall:.0f}× (wall), "
        f"{base_cpu / n_cpu:.0f}× (CPU time, all threads); target ≥ 50×"
    )
    print(
        f"numpy vs Counter.update(zip) per token: {zip_wall / n_wall:.0f}× (wall), "
        f"{zip_cpu / n_cpu:.0f}× (CPU). Identical counts on the subset: {same}"
    )
    print(
        f"numpy vs xla on this backend: {x_wall / n_wall:.2f}× (wall), {x_cpu / n_cpu:.2f}× "
        f"(CPU); xla compile {xla_compile:.1f} s apart"
    )
    print(
        f"peak memory: counting {numpy_peak / 2**20:.0f} MiB traced NumPy allocations "
        f"({numpy_peak / args.tokens:.1f} bytes/token); peak RSS after one count "
        f"{rss / 2**20:.0f} MiB"
    )
    results.update(
        {
            "vocab_size": VOCAB,
            "distances": DISTANCES,
            "documents": len(docs),
            "speedup_numpy_vs_counter_loop_wall": base_wall / n_wall,
            "speedup_numpy_vs_counter_loop_cpu": base_cpu / n_cpu,
            "speedup_numpy_vs_counter_zip_wall": zip_wall / n_wall,
            "speedup_numpy_vs_counter_zip_cpu": zip_cpu / n_cpu,
            "numpy_over_xla_wall": x_wall / n_wall,
            "counts_identical": same,
            "peak_rss_bytes": rss,
            "backend": jax.default_backend(),
            "devices": len(jax.local_devices()),
        }
    )
    return results


if __name__ == "__main__":
    raise SystemExit(main())
