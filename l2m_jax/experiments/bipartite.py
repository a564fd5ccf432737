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
against what the official code runs) without running a model.

Every run also reports: the data-processing bound I_BP ≥ Î_TP(1) of the corpus (surrogate-
corrected) with the splits that fall below it, the weighted exponent fits with the splits they
use and their bootstrap failures, the n-gram histogram behind the correction (tokens, distinct
2-grams, missing mass), the entropy-by-context curve h(t) with Hilberg's β, the document-start
token, and the cost against the official code. `--cache-dir D` keeps every scored batch in D
so an interrupted run resumes where it stopped.

Examples:
  l2m bipartite --source hidden_markov --docs 512 --length 512 --ratio 2 --json bp.json
  l2m bipartite --plan --length 2048 --splits 2..1024
  l2m bipartite --model smollm2 --corpus sword --max-len 256 --ratio 2 --preset cpu
  l2m bipartite --model smollm2 --corpus sword --preset full --cache-dir out/bp_cache
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
    data.add_argument(
        "--bos-id", type=int, default=None, help="document-start id for --model (default: its own)"
    )
    est = parser.add_argument_group("estimator")
    est.add_argument("--splits", type=int_range, default=None, help="e.g. 2..128 (default 2..L/r)")
    est.add_argument("--ratio", type=int, default=2, help="r = L/ℓ (default 2)")
    est.add_argument(
        "--ngram-weight", type=float, default=0.8, help="n-gram correction weight in [0, 1]"
    )
    est.add_argument(
        "--hilberg-from", type=int, default=None, help="first position t of the h(t) fit"
    )
    est.add_argument("--batch-size", type=int, default=None, help="documents per model call")
    est.add_argument("--bootstrap", type=int, default=1000, help="document resamples")
    est.add_argument("--plan", action="store_true", help="print the scoring plan only")
    est.add_argument(
        "--cache-dir", type=str, default=None, help="keep scored batches here; resume from them"
    )
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
    """(model, documents, corpus) for --model/--corpus; clear errors if missing."""
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
    model = load(args.model, bos_id=args.bos_id)
    if max_len > model.max_len:
        raise ValueError(f"--max-len {max_len} exceeds the model's {model.max_len} positions")
    if args.tokens is not None:
        return model, read_token_file(args.tokens, per_process=True), None
    if model.tokenizer is None:
        raise ValueError(
            f"--model {args.model} has no tokenizer.json to read --corpus {args.corpus} with; "
            "pass its token ids as --tokens FILE (.npy/.npz)"
        )
    # Each process samples its share of the documents from its own books (per_host).
    corpus = load_corpus(args.corpus, tokenizer=model.tokenizer, per_host=True)
    samples = chunk_documents(corpus, max_len, tokenizer=model.tokenizer)
    share = len(distributed.shard_for_host(range(n_docs)))
    if len(samples) < max(share, 2 if jax.process_count() == 1 else 1):
        where = " from this process's books" if jax.process_count() > 1 else ""
        raise ValueError(
            f"--corpus {args.corpus} gives {len(samples)} samples of {max_len} tokens{where}, "
            f"fewer than the {share} of --docs {n_docs} wanted; lower --docs or --max-len"
        )
    pick = np.random.default_rng(args.seed).permutation(len(samples))[:share]
    return model, samples[np.sort(pick)], corpus


def _document_start(model, override: int | None) -> dict:
    """The id the model conditions on first (`PretrainedModel.bos_id`), its token and where
    the choice comes from (`bos_source`: the checkpoint's tokenizer, config.json, GGUF)."""
    bos = int(model.bos_id)
    backend = getattr(model.tokenizer, "_backend", None)  # None: bytes, or no tokenizer.json
    token = backend.id_to_token(bos) if backend is not None else None
    source = "--bos-id" if override is not None else model.bos_source
    return {"bos_id": bos, "token": token, "source": source}


def _cache_key(args, start: dict) -> dict:
    return {"model": args.model, "bos_id": start["bos_id"], "corpus": args.corpus}


def _cross_entropy(logprobs) -> dict:
    """Mean −log q per token of each kind of pass, with stderrs over documents: how well the
    model (and its document start) predicts what the estimators use."""

    def per_doc(arrays) -> dict:
        nll = -np.concatenate([a.astype(np.float64) for a in arrays], axis=1).mean(axis=1)
        return {"mean": float(nll.mean()), "stderr": float(nll.std(ddof=1) / np.sqrt(nll.size))}

    return {
        "joint": per_doc([logprobs.joint]),
        "marginal": per_doc(logprobs.marginal),
        "marginal_first_two": per_doc([m[:, :2] for m in logprobs.marginal]),
        "shuffled": per_doc(logprobs.shuffled),
        "all": per_doc([logprobs.joint, *logprobs.marginal, *logprobs.shuffled]),
    }


def measure(args: argparse.Namespace) -> dict:
    """Runs the estimators as the arguments say; returns every figure as a dict."""
    from l2m_jax.information import bipartite_mi, scoring_plan
    from l2m_jax.information.bipartite import FIT_RULE, UNDERSAMPLED_MISSING_MASS

    if args.ratio < 2:
        raise ValueError(f"--ratio must be an integer ≥ 2, got {args.ratio}")
    if not 0.0 <= args.ngram_weight <= 1.0:
        raise ValueError(
            f"--ngram-weight must lie in [0, 1] (0.8 is the paper's; 0 turns the correction "
            f"off), got {args.ngram_weight}"
        )
    chosen = [n for n in ("source", "model") if getattr(args, n) is not None]
    if len(chosen) != 1:
        raise ValueError("choose the model: exactly one of --source NAME or --model NAME")
    if args.bos_id is not None and args.model is None:
        raise ValueError("--bos-id applies to --model (an exact --source has no BOS token)")
    exact_src = corpus = None
    label = ""
    if args.model is not None:
        with distributed.agreed_errors():  # each process reads its own documents
            model, docs, corpus = _pretrained(args)
        fn, params, max_len = model.logprob_fn, model.params, model.max_len
        # a Hugging Face folder without tokenizer.json scores --tokens over the embedding's ids
        vocab = model.config.vocab_size if model.tokenizer is None else model.tokenizer.vocab_size
        batch = args.batch_size or PRESETS[args.preset][2]
        label = f"{args.model} on {args.corpus or args.tokens}"
        start = _document_start(model, args.bos_id)
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
        start = {"bos_id": None, "token": None, "source": "the source's own initial law"}
    if len(docs) == 0:
        raise ValueError("no documents to score")
    shortest = np.array([min(int(np.asarray(d).size) for d in docs)])
    length = int(np.concatenate(distributed.gather_arrays(shortest)).min())  # of every process
    splits = _splits(args, length)
    extra = {} if args.hilberg_from is None else {"hilberg_from": args.hilberg_from}
    res = bipartite_mi(
        fn,
        params,
        docs,
        splits,
        args.ratio,
        batch_size=batch,
        ngram_weight=args.ngram_weight,
        corpus=corpus,
        vocab_size=vocab,
        max_len=max_len,
        bootstrap=args.bootstrap,
        seed=args.seed,
        cache_dir=args.cache_dir,
        cache_key=_cache_key(args, start),
        progress=not args.quiet,
        **extra,
    )
    plan = scoring_plan(splits, args.ratio)
    rec = {
        "label": label,
        "ratio": args.ratio,
        "splits": res.splits,
        "n_docs": res.n_docs,
        "document_start": start,
        "ngram_weight": res.ngram_weight,
        "ngram_entropy": res.ngram_entropy,
        "ngram_entropy_stderr": res.ngram_entropy_stderr,
        "ngram_source": "the whole corpus" if corpus is not None else "the scored documents",
        "ngram_tokens": res.ngram_tokens,
        "ngram_distinct": res.ngram_distinct,
        "ngram_missing_mass": res.ngram_missing_mass,
        "ngram_undersampled": bool(res.ngram_missing_mass > UNDERSAMPLED_MISSING_MASS),
        "bound": None if res.bound is None else res.bound._asdict(),
        "fit_rule": FIT_RULE,
        "tokens_scored": res.tokens_scored,
        "total_tokens_scored": res.total_tokens_scored,
        "tokens_processed": res.tokens_processed,
        "tokens_official": res.tokens_official,
        "fraction_scored": plan.fraction_scored,
        "fraction_processed": plan.fraction_processed,
        "cache_dir": args.cache_dir,
        "cached_batches": res.cached_batches,
    }
    for key in ("direct", "direct_uncorrected", "vclub"):
        rec[key] = getattr(res, key)
        rec[f"{key}_stderr"] = getattr(res, f"{key}_stderr")
        rec[f"{key}_below_bound"] = getattr(res, f"{key}_below_bound")
        fit = getattr(res, f"{key}_fit")
        rec[f"{key}_fit"] = None if fit is None else fit._asdict()
    rec["cross_entropy"] = _cross_entropy(res.logprobs)
    ebc = res.entropy_by_context
    rec["entropy_by_context"] = {
        "positions": ebc.positions,
        "mean": ebc.mean,
        "stderr": ebc.stderr,
        "fit_from": ebc.fit_from,
        "fit": None if ebc.fit is None else ebc.fit._asdict(),
        "interval": ebc.interval,
        "bootstrap_std": ebc.bootstrap_std,
        "bootstrap_resamples": ebc.bootstrap_resamples,
        "bootstrap_failed": ebc.bootstrap_failed,
    }
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
        f"per document: {plan.tokens_processed} positions run through the model, "
        f"{plan.tokens_scored} log-probs used; the official code runs and scores "
        f"{plan.tokens_official} (one pass of L, then per split a marginal pass of L − ℓ and "
        f"a shuffled pass of L): fractions {plan.fraction_processed:.4f} run, "
        f"{plan.fraction_scored:.4f} used"
    )
    return {
        "length": length,
        "ratio": plan.ratio,
        "splits": list(plan.splits),
        "passes": passes,
        "tokens_scored": plan.tokens_scored,
        "tokens_processed": plan.tokens_processed,
        "tokens_official": plan.tokens_official,
        "fraction_scored": plan.fraction_scored,
        "fraction_processed": plan.fraction_processed,
    }


_NAMES = {"direct": "direct (corrected)", "direct_uncorrected": "uncorrected", "vclub": "vCLUB"}


def _fit_text(fit: dict | None) -> str:
    if fit is None:
        return "no power-law fit (fewer than 3 splits pass the fit rule)"
    text = (
        f"ℓ^{fit['exponent']:.4f} ± {fit['exponent_stderr']:.4f} "
        f"(χ²/dof {fit['chi2']:.3g}/{fit['dof']}; "
    )
    total = fit["bootstrap_resamples"] + fit["bootstrap_failed"]
    if fit["interval"] is None:
        text += f"no bootstrap interval: all {total} resamples failed"
    else:
        lo, hi = fit["interval"]
        text += f"bootstrap 95% [{lo:.4f}, {hi:.4f}], {fit['bootstrap_failed']}/{total} failed"
    text += f"; ℓ = {','.join(str(e) for e in fit['splits'])}"
    if fit["excluded"]:
        text += "; left out " + ", ".join(f"ℓ = {e} ({why})" for e, why in fit["excluded"])
    return text + ")"


def _hilberg_text(ebc: dict) -> str:
    fit = ebc["fit"]
    if fit is None:
        return "no Hilberg fit (fewer than 4 positions)"
    total = ebc["bootstrap_resamples"] + ebc["bootstrap_failed"]
    text = (
        f"β = {fit['beta']:.4f} ± {fit['beta_stderr']:.4f} (positions independent), "
        f"h∞ = {fit['entropy_rate']:.3f} nats/token, fitted over t = {ebc['fit_from']}…"
        f"{ebc['positions'][-1]}"
    )
    if fit["at_boundary"]:
        text += ", exponent at the edge of the searched range"
    if ebc["interval"] is None:
        return text + f"; no bootstrap interval (all {total} resamples failed)"
    lo, hi = ebc["interval"]
    return text + f"; bootstrap 95% [{lo:.4f}, {hi:.4f}], {ebc['bootstrap_failed']}/{total} failed"


def plot(rec: dict, path: str) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    ell = np.asarray(rec["splits"], np.float64)
    styles = {"direct": ("o", "-"), "direct_uncorrected": ("s", "--"), "vclub": ("^", ":")}
    bound = rec.get("bound")
    for key, (marker, line) in styles.items():
        y, se = np.asarray(rec[key]), np.asarray(rec[f"{key}_stderr"])
        fit = rec[f"{key}_fit"]
        fitted = np.isin(ell, fit["splits"] if fit is not None else [])
        shown = y > 0  # log axis
        (h,) = ax.plot(ell[shown], y[shown], line, alpha=0.5)
        color = h.get_color()
        for mask, fill, label in (
            (shown & fitted, color, _NAMES[key]),
            (shown & ~fitted, "none", f"{_NAMES[key]}: not fitted"),
        ):
            if mask.any():
                ax.errorbar(
                    ell[mask], y[mask], yerr=se[mask], fmt=marker, color=color, mfc=fill,
                    capsize=3, label=label,
                )  # fmt: skip
        flagged = shown & np.asarray(rec[f"{key}_below_bound"], bool)
        if flagged.any():
            ax.plot(
                ell[flagged], y[flagged], "x", color="red", ms=10, label="below the bound by > 3σ"
            )
        if fit is not None:
            x = np.asarray(fit["splits"], np.float64)
            ax.plot(
                x,
                fit["amplitude"] * x ** fit["exponent"],
                color=color,
                lw=0.8,
                label=f"fit: ℓ^{fit['exponent']:.3f} ± {fit['exponent_stderr']:.3f}",
            )
    if bound is not None:
        ax.axhspan(bound["value"] - bound["stderr"], bound["value"] + bound["stderr"], color="0.6")
        ax.axhline(bound["value"], color="0.4", lw=1, label=f"bound Î_TP(1) = {bound['value']:.3f}")
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
    ax.legend(fontsize=7)
    ebc = rec["entropy_by_context"]
    t, h, se = (np.asarray(ebc[k], np.float64) for k in ("positions", "mean", "stderr"))
    bx.fill_between(t, h - se, h + se, color="C0", alpha=0.3, lw=0)
    bx.plot(t, h, color="C0", lw=1, label="h(t) = E[−log q(W_t | W_<t)]")
    fit = ebc["fit"]
    if fit is not None:
        tt = t[ebc["fit_from"] - 1 :]
        bx.plot(
            tt,
            fit["entropy_rate"] + fit["amplitude"] * tt ** (fit["beta"] - 1),
            "k--",
            lw=1,
            label=f"h∞ + A·t^(β−1): β = {fit['beta']:.3f}, h∞ = {fit['entropy_rate']:.3f}",
        )
    bx.set_xscale("log")
    bx.set(xlabel="position t", ylabel="nats/token", title="entropy by context (joint pass)")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=8)
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
    headers.append("below bound")
    rows = []
    for s, ell in enumerate(rec["splits"]):
        row = [int(ell)]
        for key in _NAMES:
            row += [float(rec[key][s]), float(rec[f"{key}_stderr"][s])]
        if "exact" in rec:
            row.append(float(rec["exact"][s]))
        row.append(",".join(_NAMES[k] for k in _NAMES if rec[f"{k}_below_bound"][s]) or "-")
        rows.append(row)
    print_table(headers, rows)
    bound = rec["bound"]
    if bound is not None:
        print(
            f"data-processing bound I_BP ≥ Î_TP(1) = {bound['value']:.4f} ± {bound['stderr']:.4f}"
            f" (raw {bound['raw']:.4f} − shuffled surrogate {bound['surrogate']:.4f})"
        )
    for key, name in _NAMES.items():
        print(f"{name}: {_fit_text(rec[f'{key}_fit'])}")
    print(f"entropy by context: {_hilberg_text(rec['entropy_by_context'])}")
    if rec["ngram_weight"] > 0:
        print(
            f"n-gram correction: w = {rec['ngram_weight']}, Ĥ_G(2-grams) = "
            f"{rec['ngram_entropy']:.4f} ± {rec['ngram_entropy_stderr']:.4f} nats from "
            f"{rec['ngram_source']} ({rec['ngram_tokens']} tokens, {rec['ngram_distinct']} "
            f"distinct 2-grams, missing mass {rec['ngram_missing_mass']:.3f}"
            + (", UNDERSAMPLED)" if rec["ngram_undersampled"] else ")")
        )
    start, ce = rec["document_start"], rec["cross_entropy"]
    if start["bos_id"] is not None:
        print(f"document start: id {start['bos_id']} {start['token']!r} ({start['source']})")
    print(
        "cross-entropy, nats/token: "
        + ", ".join(
            f"{k.replace('_', ' ')} {v['mean']:.4f} ± {v['stderr']:.4f}" for k, v in ce.items()
        )
    )
    print(
        f"cost: {rec['tokens_processed']} positions run through the model (padding included),"
        f" {rec['total_tokens_scored']} log-probs kept; the official code runs and scores "
        f"{rec['tokens_official']}: fractions {rec['fraction_processed']:.4f} run, "
        f"{rec['fraction_scored']:.4f} used"
        + (f"; {rec['cached_batches']} batches from the cache" if rec["cache_dir"] else "")
    )
    if args.json:
        write_json(args.json, rec)
    if args.plot:
        plot(rec, args.plot)
    return 0
