"""Train one model on Gaussian data (exact KL) and report position-wise KL and NLL.

Gaussian data (PAPER.md §6): every step draws fresh sequences from the sub-volume or log-law
family (L = 4^layers positions, C independent channels per token, an all-zero BOS vector in
front); the loss is the exact per-token KL against the family's exact conditionals, the NLL
is reported alongside. The model must be a Gaussian-head preset (`l2m models` lists them);
its channels and learned positions are set to the data's C and L.

Text (PAPER.md §6, Fig. 4): a token model (gpt2-tiny, mamba-tiny, ... or the paper's sizes)
trained with NLL on chunks of a corpus that start at sentence beginnings, BOS in front; the
held-out metric is the position-wise NLL_i. `--preset cpu` is the CPU comparison of a GPT-2
style transformer with Mamba on the SWORD corpus (byte tokens, 256 positions).

Several comma-separated models train one after the other (run directories --out/<model>) and
share one plot: Fig. 3a (KL_i) for Gaussian data, Fig. 4 (NLL_i, smoothed) for text.

With --out DIR the run is checkpointed (orbax) and logged there (log.jsonl per step,
eval.jsonl per evaluation, config.json); --resume continues it exactly where the last
checkpoint left it. Ctrl-C (or SIGTERM) saves a checkpoint and stops.

Examples:
  l2m train --model gauss-gpt2 --data subvolume --layers 3 --channels 4 --steps 2000 \\
      --batch 8 --lr 1e-2 --out runs/gpt2-L64 --json runs/gpt2-L64.json --plot kl.png
  l2m train ... --out runs/gpt2-L64 --resume
  l2m train --data text --preset cpu --out runs/text --json text.json --plot nll.png
  l2m train --data text --corpus sword --tokenizer gpt2 --model gpt2-tiny,mamba-tiny \
      --seq-len 256 --steps 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import pathlib
from typing import Any, NamedTuple

import numpy as np

from l2m_jax.experiments._common import print_table, pyplot, save_figure, write_json

FAMILIES = ("subvolume", "log")
DATA_KINDS = (*FAMILIES, "text")

# `--data text --preset cpu`: GPT-2 style vs Mamba on the SWORD corpus, byte tokens.
TEXT_PRESETS = {
    "cpu": dict(
        model="gpt2-tiny,mamba-tiny",
        corpus="sword",
        tokenizer="bytes",
        seq_len=256,
        steps=600,
        batch=8,
        lr=1e-2,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="model preset(s), comma-separated (see `l2m models`)"
    )
    parser.add_argument("--data", choices=DATA_KINDS, default="subvolume")
    parser.add_argument("--layers", type=int, default=None, help="family layers: L = 4^layers")
    parser.add_argument("--seq-len", type=int, default=None, help="L (instead of --layers)")
    parser.add_argument("--channels", type=int, default=4, help="channels per token (C)")
    parser.add_argument("--coupling", type=float, default=0.3, help="row-boundary coupling")
    parser.add_argument("--corpus", default=None, help="text: sword, shakespeare, pg19, a folder")
    parser.add_argument("--tokenizer", default=None, help="text: bytes, gpt2, smollm2, bpe:PATH")
    parser.add_argument("--max-docs", type=int, default=None, help="text: read at most this many")
    parser.add_argument("--preset", default=None, help=f"text defaults: {', '.join(TEXT_PRESETS)}")
    _add_train_arguments(parser)
    parser.add_argument("--out", default=None, help="run directory (checkpoints, logs)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--json", default=None, help="write the final metrics here")
    parser.add_argument("--plot", default=None, help="position-wise KL / NLL plot (PNG)")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="default 2000")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 8)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (1e-2)")
    parser.add_argument("--warmup", type=int, default=None, help="default: steps/10, ≤ 2000")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=1.0, help="global-norm clip (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=None, help="default: steps/4")
    parser.add_argument("--eval-size", type=int, default=64, help="held-out sequences")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="default: steps/4")


def train_config(args: argparse.Namespace):
    from l2m_jax.train import TrainConfig

    steps = args.steps
    if steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {steps}")
    quarter = max(1, steps // 4)
    return TrainConfig(
        steps=steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=min(2000, steps // 10) if args.warmup is None else args.warmup,
        weight_decay=args.weight_decay,
        grad_clip=args.clip,
        seed=args.seed,
        eval_every=args.eval_every or quarter,
        eval_size=args.eval_size,
        checkpoint_every=args.checkpoint_every or quarter,
    )


def gaussian_family(kind: str, channels: int, *, layers=None, seq_len=None, coupling=0.3):
    """The family of `kind` with L = 4^layers (or the given seq_len, which must be 4^l)."""
    from l2m_jax import sources

    if kind not in FAMILIES:
        raise ValueError(f"data must be one of {FAMILIES} for Gaussian training, got {kind!r}")
    if (layers is None) == (seq_len is None):
        raise ValueError("give exactly one of --layers and --seq-len")
    if seq_len is not None:
        layers = round(math.log(seq_len, 4)) if seq_len >= 1 else 0
        if seq_len < 4 or 4**layers != seq_len:
            nearest = ", ".join(str(4**k) for k in range(1, 8))
            raise ValueError(
                f"the {kind} family produces only L = 4^layers ({nearest}, ...); "
                f"got --seq-len {seq_len}"
            )
    make = sources.subvolume_gaussian if kind == "subvolume" else sources.log_gaussian
    return make(layers, channels, coupling=coupling)


def _check_head(name: str, want: str, **overrides) -> Any:
    """The preset `name`; ValueError unless its head is `want` ("gaussian" or "tokens")."""
    from l2m_jax import models

    config = models.preset(name, **overrides)
    if config.head != want:
        fits = [n for n, c in models.PRESETS.items() if c.head == want]
        has = "a token head" if want == "gaussian" else "a Gaussian head"
        data = "Gaussian data" if want == "gaussian" else "text"
        raise ValueError(f"model {name!r} has {has}; {data} needs one of: {', '.join(fits)}")
    return config


def gaussian_model(name: str, family, **overrides) -> Any:
    """The preset `name` (with `overrides`) with the family's channels and L positions."""
    config = _check_head(name, "gaussian", **overrides)
    return dataclasses.replace(config, channels=family.channels, max_positions=family.length)


def model_json(name: str, config) -> dict:
    return {"preset": name, "type": type(config).__name__, **dataclasses.asdict(config)}


def family_json(family) -> dict:
    fields = ("name", "layers", "channels", "branching", "copies", "coupling", "rho")
    return {f: getattr(family, f) for f in fields}


def train_gaussian(
    model_name: str,
    family,
    config,
    *,
    out: str | pathlib.Path | None = None,
    resume: bool = False,
    progress: bool = True,
    overrides: dict | None = None,
    label: str | None = None,
) -> dict:
    """Trains preset `model_name` on `family`; returns a JSON-able summary of the run."""
    import jax

    from l2m_jax import models, train

    model_config = gaussian_model(model_name, family, **(overrides or {}))
    label = label or model_name
    task = train.GaussianTask(family, functools.partial(models.apply, model_config))
    params = models.init(model_config, jax.random.key(config.seed + 1))
    result = train.fit(
        task,
        params,
        config,
        out_dir=out,
        run_config={"model": model_json(model_name, model_config), "data": family_json(family)},
        resume=resume,
        progress=progress,
        description=f"{label} L={family.length}",
    )
    final = result.evals[-1]
    L = family.length
    state = models.history_state_size(model_config, L // 2)
    mi = family.bipartite_mi(L // 2)
    return {
        "model": label,
        "preset": model_name,
        "model_type": type(model_config).__name__,
        "family": family.name,
        "seq_len": L,
        "channels": family.channels,
        "history_state_size": state.total,
        "bipartite_mi": mi,
        "mi_per_state": mi / state.total,
        "params": models.param_count(params),
        "steps": int(result.state.step),
        "steps_per_s": result.steps_per_s,
        "interrupted": result.interrupted,
        "avg_kl": final["avg_kl"],
        "kl_by_position": final["kl_by_position"],
        "avg_nll": final["avg_nll"],
        "nll_by_position": final["nll_by_position"],
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "evals": [{k: e[k] for k in ("step", "avg_kl", "avg_nll")} for e in result.evals],
    }


class TextData(NamedTuple):
    corpus: str
    tokenizer: Any  # l2m_jax.sources.tokenize.Tokenizer
    train_BxL: np.ndarray  # this process's int32 chunks starting at sentence beginnings (no BOS)
    eval_BxL: np.ndarray  # this process's held-out chunks
    processes: int  # how many processes hold chunks of their own
    chunks: tuple[int, int]  # (training, held-out) chunks of all processes


def text_data(args: argparse.Namespace, config) -> TextData:
    """Chunks of `--seq-len` tokens from the corpus: enough for every step, plus a held-out set.

    Each of the P processes reads and tokenizes only its own documents (`load_corpus` with
    `per_host=True`) and cuts its own chunks: batch / P rows per step and eval size / P
    held-out chunks, drawn at random (seeded) from its chunks and removed from its training
    set. With one process that is the whole corpus.
    """
    import jax

    from l2m_jax import distributed
    from l2m_jax.sources import text, tokenize

    if args.corpus is None or args.tokenizer is None or args.seq_len is None:
        raise ValueError("--data text needs --corpus, --tokenizer and --seq-len (or --preset cpu)")
    if args.seq_len < 2:
        raise ValueError(f"--seq-len must be ≥ 2, got {args.seq_len}")
    n_proc = jax.process_count()
    if config.batch_size % n_proc or config.eval_size % n_proc:
        raise ValueError(
            f"--batch {config.batch_size} and --eval-size {config.eval_size} must be multiples "
            f"of the {n_proc} processes (each feeds its own share)"
        )
    batch, eval_size = config.batch_size // n_proc, config.eval_size // n_proc
    with distributed.agreed_errors():  # a process short of data stops every process
        tokenizer = tokenize.get_tokenizer(args.tokenizer)
        docs = text.load_corpus(
            args.corpus,
            tokenizer=tokenizer,
            min_tokens=args.seq_len,
            max_docs=args.max_docs,
            per_host=True,
        )
        wanted = config.steps * batch + eval_size
        chunks = text.chunk_documents(docs, args.seq_len, tokenizer=tokenizer, max_chunks=wanted)
        if len(chunks) < eval_size + batch:
            where = f" for process {jax.process_index()} of {n_proc}" if n_proc > 1 else ""
            raise ValueError(
                f"the corpus gives only {len(chunks)} chunks of {args.seq_len} tokens{where}; "
                f"need at least (--eval-size + --batch) / processes = {eval_size + batch}"
            )
    order = np.random.default_rng(config.seed).permutation(len(chunks))
    held_out = np.sort(order[:eval_size])
    keep = np.sort(order[eval_size:])
    totals = distributed.sum_arrays(np.array([keep.size, held_out.size], np.int64))
    return TextData(
        str(args.corpus),
        tokenizer,
        chunks[keep],
        chunks[held_out],
        n_proc,
        (int(totals[0]), int(totals[1])),
    )


def token_model(name: str, tokenizer, seq_len: int, **overrides) -> tuple[Any, int]:
    """The token preset `name` sized for `tokenizer` and `seq_len`; returns (config, bos id).

    A tokenizer without a BOS id gets one appended to its vocabulary.
    """
    config = _check_head(name, "tokens", **overrides)
    vocab, bos = tokenizer.vocab_size, tokenizer.bos_id
    if bos is None:
        bos, vocab = vocab, vocab + 1
    changes = dict(vocab_size=vocab, bos_id=bos)
    if config.max_positions:
        changes["max_positions"] = seq_len
    return dataclasses.replace(config, **changes), bos


def _with_bos(chunks_BxL: np.ndarray, bos: int) -> np.ndarray:
    bos_Bx1 = np.full((chunks_BxL.shape[0], 1), bos, np.int32)
    return np.concatenate([bos_Bx1, chunks_BxL.astype(np.int32)], axis=1)


def _epoch_batches(chunks_BxL: np.ndarray, bos: int, seed: int, processes: int = 1):
    """batches(step, B): this process's B / processes rows for the step, rows step·b ...
    step·b + b − 1 (b = B / processes) of a seeded shuffle of its chunks per epoch."""
    n = len(chunks_BxL)

    @functools.lru_cache(maxsize=4)
    def permutation(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(n)

    def batches(step: int, batch: int) -> np.ndarray:
        local = batch // processes
        rows = np.arange(step * local, (step + 1) * local)
        idx = np.array([permutation(int(r // n))[r % n] for r in rows])
        return _with_bos(chunks_BxL[idx], bos)

    return batches


def text_task(model_name: str, data: TextData, config) -> tuple[Any, Any, Any]:
    """(TokenTask, initial params, model config) of token preset `model_name` on `data`."""
    import jax

    from l2m_jax import models, train

    seq_len = data.train_BxL.shape[1]
    model_config, bos = token_model(model_name, data.tokenizer, seq_len)
    task = train.TokenTask(
        logprob_fn=functools.partial(models.token_logprobs, model_config),
        batches=_epoch_batches(data.train_BxL, bos, config.seed, data.processes),
        seq_len=seq_len,
        eval_data=_with_bos(data.eval_BxL, bos),
    )
    return task, models.init(model_config, jax.random.key(config.seed + 1)), model_config


def train_text(
    model_name: str,
    data: TextData,
    config,
    *,
    out: str | pathlib.Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Trains token preset `model_name` on `data` with NLL; returns a JSON-able summary."""
    from l2m_jax import models, train

    seq_len = data.train_BxL.shape[1]
    task, params, model_config = text_task(model_name, data, config)
    data_json = {
        "corpus": data.corpus,
        "tokenizer": data.tokenizer.name,
        "seq_len": seq_len,
        "train_chunks": data.chunks[0],
        "eval_chunks": data.chunks[1],
    }
    if data.processes > 1:  # each process trains on its own documents: resume with as many
        data_json["processes"] = data.processes
    result = train.fit(
        task,
        params,
        config,
        out_dir=out,
        resume=resume,
        progress=progress,
        run_config={"model": model_json(model_name, model_config), "data": data_json},
        description=f"{model_name} L={seq_len}",
    )
    final = result.evals[-1]
    return {
        "model": model_name,
        "model_type": type(model_config).__name__,
        **data_json,
        "params": models.param_count(params),
        "steps": int(result.state.step),
        "epochs": int(result.state.step) * config.batch_size / data.chunks[0],
        "steps_per_s": result.steps_per_s,
        "interrupted": result.interrupted,
        "avg_nll": final["avg_nll"],
        "nll_by_position": final["nll_by_position"],
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "evals": [{k: e[k] for k in ("step", "avg_nll")} for e in result.evals],
    }


def smooth(values, window: int) -> np.ndarray:
    """Moving average over `window` positions (shorter at the edges)."""
    values = np.asarray(values, np.float64)
    if window <= 1 or values.size < 2:
        return values
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def plot_positions(runs: list[dict], metric: str, path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        values = run[f"{metric}_by_position"]
        window = max(1, len(values) // 32)
        ax.plot(np.arange(1, len(values) + 1), smooth(values, window), label=run["label"])
    ax.set_xlabel("position i")
    ax.set_ylabel({"kl": "KL_i (nats per channel)", "nll": "NLL_i (nats)"}[metric])
    ax.set_xscale("log")
    if metric == "kl":
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _apply_defaults(args: argparse.Namespace) -> None:
    defaults = dict(steps=2000, batch=8, lr=1e-2)
    if args.preset is not None:
        if args.data != "text" or args.preset not in TEXT_PRESETS:
            raise ValueError(
                f"unknown preset {args.preset!r} for --data {args.data}; presets: "
                + ", ".join(f"--data text --preset {name}" for name in TEXT_PRESETS)
                + " (the Gaussian sweep presets are `l2m sweep --preset`)"
            )
        defaults.update(TEXT_PRESETS[args.preset])
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.model is None:
        raise ValueError("--model is required (or --data text --preset cpu)")


def run(args: argparse.Namespace) -> int:
    from l2m_jax import distributed

    _apply_defaults(args)
    distributed.initialize()
    config = train_config(args)
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run directory to continue)")
    names = [n for n in args.model.split(",") if n]
    for name in names:  # before any data is loaded
        _check_head(name, "tokens" if args.data == "text" else "gaussian")
    if args.data == "text":
        data = text_data(args, config)
    else:
        data = gaussian_family(
            args.data,
            args.channels,
            layers=args.layers,
            seq_len=args.seq_len,
            coupling=args.coupling,
        )
    summaries = []
    for name in names:
        out = args.out if args.out is None or len(names) == 1 else pathlib.Path(args.out) / name
        if args.data == "text":
            summary = train_text(name, data, config, out=out, resume=args.resume)
        else:
            summary = train_gaussian(name, data, config, out=out, resume=args.resume)
        summaries.append(summary)
        if summary["interrupted"]:
            break
    rows = [
        [r["model"], r["seq_len"], r["steps"], r.get("avg_kl", "-"), r["avg_nll"], r["steps_per_s"]]
        for r in summaries
    ]
    print_table(["model", "L", "steps", "avg KL", "avg NLL", "steps/s"], rows)
    interrupted = summaries[-1]["interrupted"]
    if interrupted:
        print(
            f"interrupted at step {summaries[-1]['steps']}; checkpoint saved, continue with "
            "the same command and --resume"
        )
    if args.json:
        write_json(args.json, {"data": args.data, "runs": summaries})
    if args.plot:
        metric = "nll" if args.data == "text" else "kl"
        runs = [{**r, "label": f"{r['model']} (L={r['seq_len']})"} for r in summaries]
        title = (
            f"{args.corpus}: position-wise NLL"
            if args.data == "text"
            else (f"{args.data} family: position-wise KL")
        )
        plot_positions(runs, metric, args.plot, title)
    return 130 if interrupted else 0
