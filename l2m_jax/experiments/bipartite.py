"""Bipartite MI I_BP(ℓ; rℓ) estimated with an autoregressive model (direct and vCLUB).

Data and model come from one of:
  --source NAME            a discrete source with exact information, scored by its exact
                           model (q = p); documents are sampled (--docs, --length) or read
                           with --tokens; the table shows the exact I_BP beside the estimates
  --tokens FILE            documents from a .npy [n_docs, T] int array or an .npz of 1-D
                           arrays, scored by --source's exact model or by --model
  --model NAME --corpus C  a pretrained model (e.g. smollm2) on a text corpus (e.g. sword),
                           cut into --max-len token samples that start at sentence beginnings
Splits default to ℓ = 2, 4, …, L/r. `--plan` prints the scoring plan (passes, tokens scored
against scoring every remaining position of every pass) without running a model.

Examples:
  l2m bipartite --source hidden_markov --docs 512 --length 512 --ratio 2 --json bp.json
  l2m bipartite --plan --length 2048 --splits 2..1024
  l2m bipartite --model smollm2 --corpus sword --max-len 256 --ratio 2 --preset cpu
"""

from __future__ import annotations

import argparse

import numpy as np

from l2m_jax import distributed
from l2m_jax.experiments._common import (
    int_range,
    print_table,
    pyplot,
    read_token_file,
    save_figure,
    write_json,
)

SOURCES = ("markov", "hidden_markov")
# Defaults for the pretrained-model run: samples per run, tokens per sample, batch size.
PRESETS = {"cpu": (32, 256, 8), "full": (1024, 2048, 16)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data and model")
    data.add_argument("--source", choices=SOURCES, help="discrete source with exact information")
    data.add_argument("--tokens", type=str, help=".npy [n_docs, T] or .npz of 1-D token arrays")
    data.add_argument("--model", type=str, help="pretrained model name or .gguf path (smollm2)")
    data.add_argument("--corpus", type=str, help="text corpus for --model (sword, shakespeare)")
    data.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help="defaults for --model runs: cpu (32 samples × 256 tokens) or full (1024 × 2048)",
    )
    data.add_argument("--docs", type=int, default=None, help="documents (samples) to score")
    data.add_argument("--length", type=int, default=None, help="tokens per sampled document")
    data.add_argument("--max-len", type=int, default=None, help="tokens per text sample")
    data.add_argument("--seed", type=int, default=0, help="sampling, derangement, bootstrap")
    est = parser.add_argument_group("estimator")
    est.add_argument("--splits", type=int_range, default=None, help="e.g. 2..128 (default 2..L/r)")
    est.add_argument("--ratio", type=int, default=2, help="r = L/ℓ (default 2)")
    est.add_argument("--ngram-weight", type=float, default=0.8, help="n-gram correction weight")
    est.add_argument("--batch-size", type=int, default=None, help="documents per model call")
    est.add_argument("--bootstrap", type=int, default=1000, help="document resamples")
    est.add_argument("--plan", action="store_true", help="print the scoring plan only")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=str, default=None, help="write every figure here")
    out.add_argument("--plot", type=str, default=None, help="log-log plot of I_BP(ℓ) and fit")
    out.add_argument("--quiet", action="store_true", help="no progress bar")


def _splits(args, length: int) -> list[int]:
    if args.splits is not None:
        return list(args.splits)
    top = length // args.ratio
    if top < 2:
        raise ValueError(f"length {length} at ratio {args.ratio} leaves no split ℓ ≥ 2")
    return [2**k for k in range(1, top.bit_length()) if 2**k <= top]


def _source(name: str, seed: int):
    from l2m_jax.sources import hidden_markov, markov_chain

    return markov_chain(seed=seed) if name == "markov" else hidden_markov(seed=seed)


def _pretrained(args):
    """(model, documents, 2-gram corpus) for --model/--corpus; clear errors if missing."""
    import jax

    try:
        from l2m_jax.models.pretrained import load
        from l2m_jax.sources.text import chunk_documents, load_corpus
    except ImportError as err:
        raise ValueError(
            f"--model needs l2m_jax.models.pretrained and sources.text: {err}"
        ) from None
    if args.corpus is None and args.tokens is None:
        raise ValueError("--model needs --corpus NAME (e.g. sword) or --tokens FILE")
    n_docs, max_len, _ = PRESETS[args.preset]
    n_docs = args.docs or n_docs
    max_len = args.max_len or max_len
    model = load(args.model)
    if max_len > model.max_len:
        raise ValueError(f"--max-len {max_len} exceeds the model's {model.max_len} positions")
    if args.tokens is not None:
        return model, read_token_file(args.tokens, per_process=True), None
    # Each process samples its share of the documents from its own books (per_host).
    corpus = load_corpus(args.corpus, tokenizer=model.tokenizer, per_host=True)
    samples = chunk_documents(corpus, max_len, tokenizer=model.tokenizer)
    share = len(distributed.shard_for_host(range(n_docs)))
    if len(samples) < max(share, 2 if jax.process_count() == 1 else 1):
        raise ValueError(
            f"--corpus {args.corpus}: {len(samples)} samples of {max_len} tokens, fewer than "
            f"the {share} wanted{' from this process' if jax.process_count() > 1 else ''}"
        )
    pick = np.random.default_rng(args.seed).permutation(len(samples))[:share]
    return model, samples[np.sort(pick)], corpus


def measure(args: argparse.Namespace) -> dict:
    """Runs the estimators as the arguments say; returns every figure as a dict."""
    from l2m_jax.information import bipartite_mi, scoring_plan

    if args.ratio < 2:
        raise ValueError(f"--ratio must be an integer ≥ 2, got {args.ratio}")
    chosen = [n for n in ("source", "model") if getattr(args, n) is not None]
    if len(chosen) != 1:
        raise ValueError("choose the model: exactly one of --source NAME or --model NAME")
    exact_src = ngram_docs = None
    label = ""
    if args.model is not None:
        with distributed.agreed_errors():  # each process reads its own documents
            model, docs, ngram_docs = _pretrained(args)
        fn, params, max_len = model.logprob_fn, model.params, model.max_len
        vocab = model.tokenizer.vocab_size
        batch = args.batch_size or PRESETS[args.preset][2]
        label = f"{args.model} on {args.corpus or args.tokens}"
    else:
        import jax

        src = _source(args.source, args.seed)
        if args.tokens is not None:
            docs = read_token_file(args.tokens, per_process=True)
        else:
            length = args.length or 256
            docs = np.asarray(src.sample(jax.random.key(args.seed), args.docs or 256, length))
            docs = distributed.shard_for_host(list(docs))  # this process's documents
        fn, params, vocab, max_len = src.logprob_fn, src.params, src.vocab_size, None
        batch = args.batch_size or 64
        exact_src, label = src, f"{src.name} (exact model, q = p)"
    if len(docs) == 0:
        raise ValueError("no documents to score")
    shortest = np.array([min(int(np.asarray(d).size) for d in docs)])
    length = int(np.concatenate(distributed.gather_arrays(shortest)).min())  # of every process
    splits = _splits(args, length)
    res = bipartite_mi(
        fn,
        params,
        docs,
        splits,
        args.ratio,
        batch_size=batch,
        ngram_weight=args.ngram_weight,
        ngram_docs=ngram_docs,
        vocab_size=vocab,
        max_len=max_len,
        bootstrap=args.bootstrap,
        seed=args.seed,
        progress=not args.quiet,
    )
    plan = scoring_plan(splits, args.ratio)
    rec = {
        "label": label,
        "ratio": args.ratio,
        "splits": res.splits,
        "n_docs": res.n_docs,
        "ngram_weight": res.ngram_weight,
        "ngram_entropy": res.ngram_entropy,
        "ngram_entropy_stderr": res.ngram_entropy_stderr,
        "tokens_scored": res.tokens_scored,
        "total_tokens_scored": res.total_tokens_scored,
        "tokens_processed": res.tokens_processed,
        "tokens_full": res.tokens_full,
        "fraction_scored": plan.fraction_scored,
    }
    for key in ("direct", "direct_uncorrected", "vclub"):
        rec[key] = getattr(res, key)
        rec[f"{key}_stderr"] = getattr(res, f"{key}_stderr")
        fit = getattr(res, f"{key}_fit")
        rec[f"{key}_fit"] = None if fit is None else fit._asdict()
    if exact_src is not None:
        ell = np.asarray(splits)
        rec["exact"] = exact_src.bipartite_mi(ell, args.ratio * ell)
    return rec


def plan_only(args: argparse.Namespace) -> dict:
    from l2m_jax.information import scoring_plan

    length = args.length or args.max_len or 2048
    splits = _splits(args, length)
    plan = scoring_plan(splits, args.ratio, length=length)
    passes = [p._asdict() for p in plan.passes]
    print(f"scoring plan: L = {length}, ratio {plan.ratio}, splits {list(plan.splits)}")
    rows = [[p.kind, p.split or "all", p.length, p.tokens_scored] for p in plan.passes]
    print_table(["pass", "split", "length", "scored"], rows)
    print(
        f"per document: {plan.tokens_scored} tokens scored ({plan.tokens_processed} run "
        f"through the model) vs {plan.tokens_full} scoring every remaining position of every "
        f"pass: fraction {plan.fraction_scored:.4f}"
    )
    return {
        "length": length,
        "ratio": plan.ratio,
        "splits": list(plan.splits),
        "passes": passes,
        "tokens_scored": plan.tokens_scored,
        "tokens_processed": plan.tokens_processed,
        "tokens_full": plan.tokens_full,
        "fraction_scored": plan.fraction_scored,
    }


def plot(rec: dict, path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ell = np.asarray(rec["splits"], np.float64)
    styles = {"direct": "o-", "direct_uncorrected": "s--", "vclub": "^:"}
    for key, style in styles.items():
        y, se = np.asarray(rec[key]), np.asarray(rec[f"{key}_stderr"])
        ax.errorbar(ell, y, yerr=se, fmt=style, capsize=3, label=key.replace("_", " "))
    fit = rec["direct_fit"]
    if fit is not None:
        lo, hi = fit["interval"]
        ax.plot(
            ell,
            fit["amplitude"] * ell ** fit["exponent"],
            color="gray",
            label=f"fit: ℓ^{fit['exponent']:.3f} ± {fit['exponent_stderr']:.3f} "
            f"[{lo:.3f}, {hi:.3f}]",
        )
    if "exact" in rec:
        ax.plot(ell, rec["exact"], "k-", lw=2, alpha=0.4, label="exact")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(
        xlabel="split ℓ",
        ylabel=f"I_BP(ℓ; {rec['ratio']}ℓ) [nats]",
        title=f"bipartite MI — {rec['label']}",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    if args.plan:
        rec = plan_only(args)
        if args.json:
            write_json(args.json, rec)
        return 0
    rec = measure(args)
    print(f"bipartite MI of {rec['label']}, ratio {rec['ratio']}, {rec['n_docs'][0]} documents")
    headers = ["ℓ", "direct", "±", "uncorrected", "±", "vCLUB", "±"]
    if "exact" in rec:
        headers.append("exact")
    rows = []
    for s, ell in enumerate(rec["splits"]):
        row = [int(ell)]
        for key in ("direct", "direct_uncorrected", "vclub"):
            row += [float(rec[key][s]), float(rec[f"{key}_stderr"][s])]
        if "exact" in rec:
            row.append(float(rec["exact"][s]))
        rows.append(row)
    print_table(headers, rows)
    for key in ("direct", "direct_uncorrected", "vclub"):
        fit = rec[f"{key}_fit"]
        if fit is None:
            print(f"{key}: no power-law fit (needs ≥ 3 splits above the last estimate ≤ 0)")
        else:
            lo, hi = fit["interval"]
            fitted = fit["splits"]
            print(
                f"{key}: I ∝ ℓ^{fit['exponent']:.4f} ± {fit['exponent_stderr']:.4f} "
                f"(bootstrap 95% [{lo:.4f}, {hi:.4f}]; ℓ = {fitted[0]}…{fitted[-1]})"
            )
    print(
        f"tokens scored: {rec['total_tokens_scored']} (run through the model: "
        f"{rec['tokens_processed']}); scoring every remaining position of every pass: "
        f"{rec['tokens_full']} (fraction {rec['fraction_scored']:.4f})"
    )
    if args.json:
        write_json(args.json, rec)
    if args.plot:
        plot(rec, args.plot)
    return 0
