"""Two-point MI I_TP(d) from token counts, with the bias-corrected power-law fit.

Counts the ordered pairs (w_i, w_i+d) inside documents for every distance in one pass and
estimates Î_TP(d) with Grassberger entropies (± delta-method standard errors, iid pairs), then
fits Î = A·d^−α + C (C absorbs the estimator's positive bias) and reports α ± stderr. The bias
grows where pairs get fewer (the largest d), which a constant C cannot absorb, so by default
the fit stops at the distance of the smallest estimate (--fit-range all|a-b to choose).

Tokens come from one of:
  --tokens FILE           .npy of int token ids: [T] is one document, [n_docs, T] is n_docs
                          documents; or .npz whose arrays (1-D, in archive order) are documents
  --source NAME           a discrete source with exact I_TP (markov, hidden_markov): --docs
                          documents of --length tokens are sampled; the exact value is shown
  --corpus C --tokenizer T  a text corpus (sword, shakespeare, pg19, a folder of .txt files)
                          tokenized with T (gpt2, bytes, smollm2, …), cached after the first run

Examples:
  l2m two-point --source markov --docs 1000 --length 1000 --distances 1-64
  l2m two-point --corpus sword --tokenizer gpt2 --distances 1..4096 --json tp.json --plot tp.png
  l2m two-point --tokens corpus.npz --vocab-size 50257 --distances 1..1024
"""

from __future__ import annotations

import argparse
import time

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("tokens")
    data.add_argument("--tokens", type=str, help=".npy [T] or [n_docs, T], or .npz of 1-D arrays")
    data.add_argument("--source", choices=SOURCES, help="discrete source with exact I_TP")
    data.add_argument("--docs", type=int, default=1000, help="documents sampled from --source")
    data.add_argument("--length", type=int, default=1000, help="tokens per sampled document")
    data.add_argument("--seed", type=int, default=0, help="source parameters and sampling")
    data.add_argument("--corpus", type=str, help="text corpus: sword, shakespeare, pg19, folder")
    data.add_argument("--tokenizer", type=str, default="gpt2", help="tokenizer for --corpus")
    data.add_argument("--vocab-size", type=int, default=None, help="V (default: max id + 1)")
    est = parser.add_argument_group("estimator")
    est.add_argument(
        "--distances", type=int_range, default="1..4096", help="e.g. 1..4096 (default), 1-64"
    )
    est.add_argument(
        "--implementation",
        choices=["auto", "numpy", "xla"],
        default="auto",
        help="counting: NumPy on CPU, sharded XLA sort on GPU/TPU (auto)",
    )
    est.add_argument(
        "--fit-range",
        default="auto",
        help="distances to fit: auto (up to the smallest estimate; default), all, or e.g. 1-512",
    )
    est.add_argument("--chunk-tokens", type=int, default=1 << 24, help="tokens per chunk")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=str, default=None, help="write every figure here")
    out.add_argument("--plot", type=str, default=None, help="log-log plot of I_TP(d) and fit")
    out.add_argument("--quiet", action="store_true", help="no progress bar")


def _documents(args) -> tuple[list[np.ndarray], int | None, object, str]:
    """(documents, vocab size or None, exact source or None, label)."""
    chosen = [n for n in ("tokens", "source", "corpus") if getattr(args, n) is not None]
    if len(chosen) != 1:
        raise ValueError("choose the tokens: exactly one of --tokens, --source or --corpus")
    if args.tokens is not None:  # each process reads its own documents
        return read_token_file(args.tokens, per_process=True), args.vocab_size, None, args.tokens
    if args.source is not None:
        import jax

        from l2m_jax.sources import hidden_markov, markov_chain

        if args.docs < 1 or args.length < 2:
            raise ValueError("--docs must be ≥ 1 and --length ≥ 2")
        src = (
            markov_chain(seed=args.seed)
            if args.source == "markov"
            else hidden_markov(seed=args.seed)
        )
        tokens = np.asarray(src.sample(jax.random.key(args.seed), args.docs, args.length))
        return distributed.shard_for_host(list(tokens)), src.vocab_size, src, src.name
    try:
        from l2m_jax.sources.text import load_corpus
        from l2m_jax.sources.tokenize import get_tokenizer
    except ImportError as err:
        raise ValueError(f"--corpus needs l2m_jax.sources.text: {err}") from None
    tokenizer = get_tokenizer(args.tokenizer)
    docs = load_corpus(args.corpus, tokenizer=tokenizer, per_host=True)
    return docs, tokenizer.vocab_size, None, f"{args.corpus} ({args.tokenizer})"


def _fit_range(text: str):
    if text in ("auto", "all"):
        return text
    ds = int_range(text)
    return min(ds), max(ds)


def measure(args: argparse.Namespace) -> dict:
    """Counts, estimates and fits as the arguments say; returns every figure as a dict."""
    from l2m_jax.information import two_point_mi

    with distributed.agreed_errors():  # in a multi-process run, each process its own documents
        docs, vocab_size, src, label = _documents(args)
    t0 = time.perf_counter()
    result = two_point_mi(
        docs,
        args.distances,
        vocab_size,
        chunk_tokens=args.chunk_tokens,
        implementation=args.implementation,
        progress=not args.quiet,
        fit_range=_fit_range(args.fit_range),
    )
    seconds = time.perf_counter() - t0
    out = {
        "label": label,
        "tokens": result.tokens,
        "documents": result.documents,
        "vocab_size": vocab_size if vocab_size is not None else None,
        "seconds": seconds,
        "distances": result.distances,
        "mi": result.mi,
        "stderr": result.stderr,
        "pairs": result.pairs,
        "fit": {
            "alpha": result.alpha,
            "alpha_stderr": result.alpha_stderr,
            "amplitude": result.amplitude,
            "offset": result.offset,
            "distances": result.fit_distances,
        },
    }
    if src is not None:
        out["exact"] = np.asarray(src.two_point_mi(result.distances), np.float64)
    return out


def _print(res: dict) -> None:
    headers = ["d", "pairs", "I_TP (nats)", "stderr"]
    exact = res.get("exact")
    if exact is not None:
        headers += ["exact", "(est−exact)/se"]
    rows = []
    for k, d in enumerate(res["distances"]):
        row = [int(d), int(res["pairs"][k]), float(res["mi"][k]), float(res["stderr"][k])]
        if exact is not None:
            row += [float(exact[k]), float((res["mi"][k] - exact[k]) / res["stderr"][k])]
        rows.append(row)
    print(
        f"two-point MI of {res['label']}: {res['tokens']} tokens in {res['documents']} "
        f"documents, {res['seconds']:.1f} s"
    )
    print_table(headers, rows)
    fit = res["fit"]
    if fit["alpha"] is None:
        print("fit I = A·d^−α + C: needs at least 4 distances with a positive estimate")
    else:
        print(
            f"fit I = A·d^−α + C over {len(fit['distances'])} distances: "
            f"α = {fit['alpha']:.4g} ± {fit['alpha_stderr']:.2g}, A = {fit['amplitude']:.4g}, "
            f"C = {fit['offset']:.3g} (bias)"
        )


def _plot(res: dict, path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    d, mi, se = res["distances"], res["mi"], res["stderr"]
    shown = mi > 0
    ax.errorbar(d[shown], mi[shown], yerr=se[shown], fmt="o", ms=3, capsize=2, label="estimate")
    if res.get("exact") is not None:
        exact = res["exact"]
        pos = exact > 0
        ax.plot(d[pos], exact[pos], "k--", lw=1, label="exact")
    fit = res["fit"]
    if fit["alpha"] is not None:
        grid = np.geomspace(d.min(), d.max(), 200)
        curve = fit["amplitude"] * grid ** (-fit["alpha"]) + fit["offset"]
        ax.plot(grid, curve, "C1-", lw=1.2, label=f"A·d^−α + C, α = {fit['alpha']:.3g}")
        ax.axhline(fit["offset"], color="C1", ls=":", lw=1, label="C (bias)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distance d")
    ax.set_ylabel("I_TP(d) (nats)")
    ax.set_title(f"two-point MI: {res['label']}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    res = measure(args)
    _print(res)
    if args.json:
        print(f"wrote {write_json(args.json, res)}")
    if args.plot:
        _plot(res, args.plot)
        print(f"wrote {args.plot}")
    return 0
