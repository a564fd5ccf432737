"""Train one model on Gaussian data (exact KL) and report position-wise KL and NLL.

Gaussian data (PAPER.md §6): every step draws fresh sequences from the sub-volume or log-law
family (L = 4^layers positions, C independent channels per token, an all-zero BOS vector in
front); the loss is the exact per-token KL against the family's exact conditionals, the NLL
is reported alongside. The model must be a Gaussian-head preset (`l2m models` lists them);
its channels and learned positions are set to the data's C and L.

With --out DIR the run is checkpointed (orbax) and logged there (log.jsonl per step,
eval.jsonl per evaluation, config.json); --resume continues it exactly where the last
checkpoint left it. Ctrl-C (or SIGTERM) saves a checkpoint and stops.

Examples:
  l2m train --model gauss-gpt2 --data subvolume --layers 3 --channels 4 --steps 2000 \\
      --batch 8 --lr 1e-2 --out runs/gpt2-L64 --json runs/gpt2-L64.json --plot kl.png
  l2m train ... --out runs/gpt2-L64 --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import pathlib
from typing import Any

import numpy as np

from l2m_jax.experiments._common import print_table, pyplot, save_figure, write_json

FAMILIES = ("subvolume", "log")
DATA_KINDS = FAMILIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model preset (see `l2m models`)")
    parser.add_argument("--data", choices=DATA_KINDS, default="subvolume")
    parser.add_argument("--layers", type=int, default=None, help="family layers: L = 4^layers")
    parser.add_argument("--seq-len", type=int, default=None, help="L (instead of --layers)")
    parser.add_argument("--channels", type=int, default=4, help="channels per token (C)")
    parser.add_argument("--coupling", type=float, default=0.3, help="row-boundary coupling")
    _add_train_arguments(parser)
    parser.add_argument("--out", default=None, help="run directory (checkpoints, logs)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--json", default=None, help="write the final metrics here")
    parser.add_argument("--plot", default=None, help="position-wise KL / NLL plot (PNG)")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
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


def gaussian_model(name: str, family, **overrides) -> Any:
    """The preset `name` (with `overrides`) with the family's channels and L positions."""
    from l2m_jax import models

    config = models.preset(name, **overrides)
    if config.head != "gaussian":
        gaussian = [n for n, c in models.PRESETS.items() if c.head == "gaussian"]
        raise ValueError(
            f"model {name!r} has a token head; Gaussian data needs one of: {', '.join(gaussian)}"
        )
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


def run(args: argparse.Namespace) -> int:
    from l2m_jax import train

    train.maybe_initialize_distributed()
    config = train_config(args)
    if args.resume and not args.out:
        raise ValueError("--resume needs --out (the run directory to continue)")
    if args.data == "text":
        from l2m_jax.experiments import _text_train

        summary = _text_train.run_text(args, config)
        metric = "nll"
    else:
        family = gaussian_family(
            args.data,
            args.channels,
            layers=args.layers,
            seq_len=args.seq_len,
            coupling=args.coupling,
        )
        summary = train_gaussian(args.model, family, config, out=args.out, resume=args.resume)
        metric = "kl"
    rows = [
        [
            summary["model"],
            summary["seq_len"],
            summary["steps"],
            summary.get("avg_kl", float("nan")),
            summary["avg_nll"],
            summary["steps_per_s"],
        ]
    ]
    print_table(["model", "L", "steps", "avg KL", "avg NLL", "steps/s"], rows)
    if summary["interrupted"]:
        print(f"interrupted at step {summary['steps']}; checkpoint saved, continue with --resume")
    if args.json:
        write_json(args.json, summary)
    if args.plot:
        label = f"{summary['model']} (L={summary['seq_len']})"
        plot_positions(
            [{**summary, "label": label}],
            metric,
            args.plot,
            f"{args.data}: position-wise {metric.upper()}",
        )
    return 130 if summary["interrupted"] else 0
