"""The L²M experiment (PAPER.md §6, Fig. 3): models × sequence lengths on Gaussian data.

Each model is trained with the exact KL on fresh samples of the sub-volume family at every
L = 4^layers, then evaluated on a fixed held-out set. One results JSON holds under "results",
per model and L: `model`, `seq_len`, `history_state_size` (dim z at L/2, all layers),
`bipartite_mi` (I_BP(L/2; L), all channels), `avg_kl`, `kl_by_position`, `avg_nll`,
`nll_by_position` and the effective memory `k_eff` (PAPER.md §7: the window of the optimal
linear predictor from the last k positions that matches the model's average KL). Under
"checks" (values) and "findings" (sentences): what the paper predicts — average KL falls as
the SSM state grows at fixed L; the smallest SSM's late-position KL rises above the
transformer's as L grows. Plots: KL by position per model and L, average KL against L,
average KL against I_BP / dim(z) (the collapse of Fig. 3c), and k_eff against L.

Presets (`--preset`):
  cpu    4 channels; L = 16, 64, 256; gauss-gpt2 (2 layers, width 64) and Mamba-1 SSMs with
         dim(z) = 32, 128, 512 (gauss-mamba-z*); batch 4, lr 1e-2 with warmup + cosine,
         2000 / 4000 / 6000 steps (the transformer at L = 256 is the slowest part).
         Budget: about 15 minutes on 2 CPU cores.
  quick  the part of `l2m report`'s default: L = 16, 64; gauss-gpt2, dim(z) = 32 and 512;
         1500 / 2000 steps (a few minutes on 2 CPU cores).
  gpu    one accelerator (not timed here): 16 channels, L = 64 ... 4096, the same small
         models with dim(z) up to 2048 and a Mamba-2; batch 16, 20 000 steps, lr 3e-3.
  paper  the paper's setup (PAPER.md §6): 64 channels, L = 256, 1024, 4096; GPT-2 (124M),
         Mamba-130m/370m and Mamba2-130m with the Gaussian MLP embedding and head; AdamW at
         peak lr 5e-5, weight decay 0.01, 2000 warmup steps, cosine; batch 4; 500 000 steps.
         For pods: data-parallel over every device (multi-host via jax.distributed).

With --out DIR every run has its own resumable run directory (DIR/<model>-L<L>); rerunning
the same command continues unfinished runs and reuses finished ones.

Example:
  l2m sweep --preset cpu --json sweep.json --plot-dir sweep_plots
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import pathlib
import time

import numpy as np

from l2m_jax.experiments import train as train_exp
from l2m_jax.experiments._common import int_range, print_table, pyplot, save_figure, write_json


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of a sweep: a preset plus field overrides, and the label results use."""

    label: str
    preset: str
    overrides: tuple[tuple[str, object], ...] = ()


@dataclasses.dataclass(frozen=True)
class SweepPreset:
    """A sweep: models × layers (L = 4^layers) with per-layer step counts.

    Attributes:
      models: the ModelSpecs; the first transformer is the reference for the findings.
      layers: family layers, one L = 4^layers per entry.
      steps: training steps for each entry of `layers`.
      channels, family: the data (PAPER.md §4).
      batch, lr, warmup_frac, weight_decay, eval_size: training (see TrainConfig).
    """

    models: tuple[ModelSpec, ...]
    layers: tuple[int, ...]
    steps: tuple[int, ...]
    channels: int
    family: str = "subvolume"
    batch: int = 8
    lr: float = 1e-2
    warmup_frac: float = 0.1
    max_warmup: int = 2000
    weight_decay: float = 0.01
    eval_size: int = 64


_GAUSS = (("head", "gaussian"), ("vocab_size", 1))
PRESETS: dict[str, SweepPreset] = {
    "cpu": SweepPreset(
        models=(
            ModelSpec("gpt2", "gauss-gpt2"),
            ModelSpec("mamba-z32", "gauss-mamba-z32"),
            ModelSpec("mamba-z128", "gauss-mamba-z128"),
            ModelSpec("mamba-z512", "gauss-mamba-z512"),
        ),
        layers=(2, 3, 4),
        steps=(2000, 4000, 6000),
        channels=4,
        batch=4,
    ),
    "quick": SweepPreset(
        models=(
            ModelSpec("gpt2", "gauss-gpt2"),
            ModelSpec("mamba-z32", "gauss-mamba-z32"),
            ModelSpec("mamba-z512", "gauss-mamba-z512"),
        ),
        layers=(2, 3),
        steps=(1500, 2000),
        channels=4,
        batch=4,
    ),
    "gpu": SweepPreset(
        models=(
            ModelSpec("gpt2", "gauss-gpt2"),
            ModelSpec("mamba-z32", "gauss-mamba-z32"),
            ModelSpec("mamba-z128", "gauss-mamba-z128"),
            ModelSpec("mamba-z512", "gauss-mamba-z512"),
            ModelSpec("mamba-z2048", "gauss-mamba-z2048"),
            ModelSpec("mamba2", "gauss-mamba2"),
        ),
        layers=(3, 4, 5, 6),
        steps=(20_000,) * 4,
        channels=16,
        batch=16,
        lr=3e-3,
    ),
    "paper": SweepPreset(
        models=(
            ModelSpec("gpt2-124m", "gpt2", _GAUSS),
            ModelSpec("mamba-130m", "mamba-130m", _GAUSS),
            ModelSpec("mamba-370m", "mamba-370m", _GAUSS),
            ModelSpec("mamba2-130m", "mamba2-130m", _GAUSS),
        ),
        layers=(4, 5, 6),
        steps=(500_000,) * 3,
        channels=64,
        batch=4,
        lr=5e-5,
        warmup_frac=1.0,
        eval_size=64,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--models", default=None, help="comma list of labels to keep")
    parser.add_argument("--layers", type=int_range, default=None, help="override, e.g. 2-4")
    parser.add_argument("--steps", type=int, default=None, help="override every run's steps")
    parser.add_argument("--channels", type=int, default=None, help="override the channels")
    parser.add_argument("--batch", type=int, default=None, help="override the global batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directories (resumable)")
    parser.add_argument("--json", default=None, help="the results JSON")
    parser.add_argument("--plot-dir", default=None, help="write the plots here")


def get_preset(name: str) -> SweepPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown sweep preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


# ----------------------------------------------------------------------------- k_eff


def window_kl_curve(family, windows) -> np.ndarray:
    """Average KL per channel of the optimal linear predictor from the last k positions.

    For Gaussians, E_p KL(p(z_i|z_<i) ‖ N(μ_k, σ_k²)) = ½ log(σ_k² / σ_i²), with σ_k² the
    residual variance of z_i given its last k predecessors; averaged over positions i.
    """
    cov = np.asarray(family.cov, np.float64)
    L = cov.shape[0]
    exact_var = np.diag(np.linalg.cholesky(cov)) ** 2
    curve = []
    for k in windows:
        kl = np.zeros(L)
        for i in range(1, L):
            lo = max(0, i - k)
            if lo == 0:  # the window holds the whole past: exact
                continue
            w = slice(lo, i)
            c = cov[w, i]
            resid = cov[i, i] - c @ np.linalg.solve(cov[w, w], c)
            kl[i] = 0.5 * math.log(resid / exact_var[i])
        kl[0] = 0.0
        curve.append(kl.mean())
    return np.asarray(curve)


def effective_memory(family, avg_kl: float, max_len: int = 1024) -> float | None:
    """k_eff: the window k (interpolated in log k) whose optimal predictor has the model's KL.

    None when L > max_len (the exact window curve costs O(L⁴)). 0 when the model is worse
    than predicting each position from its marginal alone.
    """
    L = family.length
    if max_len < L:
        return None
    windows = [0, *sorted({min(2**j, L) for j in range(int(math.log2(L)) + 1)})]
    curve = window_kl_curve(family, windows)
    if avg_kl >= curve[0]:
        return 0.0
    for j in range(1, len(windows)):
        if curve[j] <= avg_kl:
            k0, k1, c0, c1 = windows[j - 1], windows[j], curve[j - 1], curve[j]
            if k0 == 0 or c0 == c1:
                return float(k1 if k0 == 0 else k0)
            t = (c0 - avg_kl) / (c0 - c1)  # linear in KL, geometric in k
            return float(k0 * (k1 / k0) ** t)
    return float(L)


# ----------------------------------------------------------------------------- running


def run_sweep(
    preset: SweepPreset,
    *,
    seed: int = 0,
    out: str | pathlib.Path | None = None,
    progress: bool = True,
) -> dict:
    """Trains every model at every L of `preset`; returns the results dict (JSON-able)."""
    from l2m_jax.train import TrainConfig

    if len(preset.steps) != len(preset.layers):
        raise ValueError("a sweep preset needs one step count per entry of layers")
    runs = []
    t_start = time.perf_counter()
    for layers, steps in zip(preset.layers, preset.steps, strict=True):
        family = train_exp.gaussian_family(preset.family, preset.channels, layers=layers)
        warmup = min(preset.max_warmup, int(preset.warmup_frac * steps), steps - 1)
        config = TrainConfig(
            steps=steps,
            batch_size=preset.batch,
            learning_rate=preset.lr,
            warmup_steps=warmup,
            weight_decay=preset.weight_decay,
            seed=seed,
            eval_every=steps,
            eval_size=preset.eval_size,
            checkpoint_every=max(1, steps // 4),
        )
        for spec in preset.models:
            run_dir = None
            resume = False
            if out is not None:
                run_dir = pathlib.Path(out) / f"{spec.label}-L{family.length}"
                resume = (run_dir / "checkpoints").is_dir()
            t0 = time.perf_counter()
            summary = train_exp.train_gaussian(
                spec.preset,
                family,
                config,
                out=run_dir,
                resume=resume,
                progress=progress,
                overrides=dict(spec.overrides),
                label=spec.label,
            )
            summary["seconds"] = time.perf_counter() - t0
            summary["k_eff"] = effective_memory(family, summary["avg_kl"])
            runs.append(summary)
            if summary["interrupted"]:
                return _results(preset, runs, time.perf_counter() - t_start, interrupted=True)
    return _results(preset, runs, time.perf_counter() - t_start, interrupted=False)


def late_kl(run: dict) -> float:
    """Mean KL over the last quarter of positions."""
    values = np.asarray(run["kl_by_position"])
    return float(values[-max(1, len(values) // 4) :].mean())


def checks(runs: list[dict]) -> dict:
    """What the paper predicts, checked on these runs (None where the sweep cannot tell)."""
    transformers = [r for r in runs if r["model_type"] == "TransformerConfig"]
    ssms = [r for r in runs if r["model_type"] != "TransformerConfig"]
    lengths = sorted({r["seq_len"] for r in runs})
    out: dict = {"kl_falls_with_ssm_state": {}, "late_kl_smallest_ssm_minus_transformer": {}}
    for L in lengths:
        at_L = sorted((r for r in ssms if r["seq_len"] == L), key=lambda r: r["history_state_size"])
        if len(at_L) >= 2:
            kls = [r["avg_kl"] for r in at_L]
            out["kl_falls_with_ssm_state"][L] = bool(all(a > b for a, b in itertools.pairwise(kls)))
    if transformers and ssms:
        ref = transformers[0]["model"]
        small = min(ssms, key=lambda r: r["history_state_size"])["model"]
        for L in lengths:
            t = [r for r in runs if r["model"] == ref and r["seq_len"] == L]
            s = [r for r in runs if r["model"] == small and r["seq_len"] == L]
            if t and s:
                out["late_kl_smallest_ssm_minus_transformer"][L] = late_kl(s[0]) - late_kl(t[0])
        gaps = [
            out["late_kl_smallest_ssm_minus_transformer"][L]
            for L in lengths
            if L in out["late_kl_smallest_ssm_minus_transformer"]
        ]
        out["reference_transformer"], out["smallest_ssm"] = ref, small
        out["gap_grows_with_L"] = (
            bool(all(a < b for a, b in itertools.pairwise(gaps))) if len(gaps) >= 2 else None
        )
        out["smallest_ssm_worse_at_largest_L"] = bool(gaps[-1] > 0) if gaps else None
    pairs = [(r["mi_per_state"], r["avg_kl"]) for r in runs]
    if len(pairs) >= 3:
        from scipy.stats import spearmanr

        out["collapse_rank_correlation"] = float(spearmanr(*zip(*pairs, strict=True))[0])
    return out


def _results(preset: SweepPreset, runs: list[dict], seconds: float, interrupted: bool) -> dict:
    return {
        "preset": dataclasses.asdict(preset),
        "seconds": seconds,
        "interrupted": interrupted,
        "results": runs,
        "checks": (found := checks(runs)),
        "findings": findings_text(found),
    }


# ----------------------------------------------------------------------------- plots


def plot_all(results: dict, plot_dir: str | pathlib.Path) -> list[pathlib.Path]:
    plt = pyplot()
    plot_dir = pathlib.Path(plot_dir)
    runs = results["results"]
    models = list(dict.fromkeys(r["model"] for r in runs))
    lengths = sorted({r["seq_len"] for r in runs})
    colors = {m: plt.cm.viridis(i / max(1, len(models) - 1)) for i, m in enumerate(models)}
    paths = []

    fig, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 3.8), squeeze=False)
    for ax, L in zip(axes[0], lengths, strict=True):
        for r in (r for r in runs if r["seq_len"] == L):
            values = r["kl_by_position"]
            smoothed = train_exp.smooth(values, max(1, L // 32))
            ax.plot(np.arange(1, L + 1), smoothed, color=colors[r["model"]], label=r["model"])
        ax.set(xscale="log", yscale="log", xlabel="position i", title=f"L = {L}")
    axes[0][0].set_ylabel("KL_i (nats / channel)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("position-wise KL (smoothed)")
    paths.append(save_figure(fig, plot_dir / "kl_by_position.png"))

    def against_L(key: str, ylabel: str, title: str, name: str) -> None:
        """One line per model: `key` of each run against its L (runs without it skipped)."""
        fig, ax = plt.subplots(figsize=(5, 4))
        for m in models:
            rs = sorted(
                (r for r in runs if r["model"] == m and r.get(key) is not None),
                key=lambda r: r["seq_len"],
            )
            ax.plot(
                [r["seq_len"] for r in rs], [r[key] for r in rs], "o-", color=colors[m], label=m
            )
        ax.set(xscale="log", yscale="log", xlabel="L", ylabel=ylabel, title=title)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, plot_dir / name))

    against_L(
        "avg_kl",
        "average KL (nats / channel)",
        "average KL against sequence length",
        "avg_kl_vs_L.png",
    )

    fig, ax = plt.subplots(figsize=(5, 4))
    markers = "osD^v<>ph"
    for i, L in enumerate(lengths):
        for r in (r for r in runs if r["seq_len"] == L):
            ax.scatter(
                r["mi_per_state"],
                r["avg_kl"],
                color=colors[r["model"]],
                marker=markers[i % len(markers)],
                label=f"{r['model']}, L={L}",
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="I_BP(L/2; L) / dim(z_L/2)",
        ylabel="average KL (nats / channel)",
        title="collapse onto I_BP / dim(z)",
    )
    ax.legend(fontsize=6, ncol=2)
    paths.append(save_figure(fig, plot_dir / "avg_kl_vs_mi_per_state.png"))

    if any(r.get("k_eff") is not None for r in runs):
        against_L("k_eff", "k_eff (positions)", "effective memory", "k_eff_vs_L.png")
    return paths


def findings_text(found: dict) -> list[str]:
    """The checks of `checks` as sentences (the results JSON's "findings")."""
    lines = []
    for L, ok in found["kl_falls_with_ssm_state"].items():
        lines.append(f"L={L}: average KL falls as the SSM state grows: {'yes' if ok else 'no'}")
    for L, gap in found["late_kl_smallest_ssm_minus_transformer"].items():
        lines.append(
            f"L={L}: late-position KL of {found['smallest_ssm']} minus "
            f"{found['reference_transformer']}: {gap:+.4f}"
        )
    if found.get("gap_grows_with_L") is not None:
        grows = "grows" if found["gap_grows_with_L"] else "does not grow monotonically"
        lines.append(f"that gap {grows} with L")
    if "collapse_rank_correlation" in found:
        lines.append(
            "rank correlation of average KL with I_BP/dim(z) over all runs: "
            f"{found['collapse_rank_correlation']:.3f}"
        )
    return lines


def _print(results: dict) -> None:
    rows = [
        [
            r["model"],
            r["seq_len"],
            r["history_state_size"],
            r["bipartite_mi"],
            r["avg_kl"],
            late_kl(r),
            r["avg_nll"],
            r["k_eff"] if r["k_eff"] is not None else "-",
            r["steps_per_s"],
            r["seconds"],
        ]
        for r in results["results"]
    ]
    print_table(
        ["model", "L", "dim(z)", "I_BP", "avg KL", "late KL", "avg NLL", "k_eff", "steps/s", "s"],
        rows,
    )
    for line in results["findings"]:
        print(line)
    print(f"total {results['seconds']:.0f} s")


def run(args: argparse.Namespace) -> int:
    from l2m_jax import distributed

    distributed.initialize()
    preset = get_preset(args.preset)
    if args.models:
        keep = args.models.split(",")
        unknown = sorted(set(keep) - {m.label for m in preset.models})
        if unknown:
            raise ValueError(
                f"--models {unknown} are not in preset {args.preset!r}: "
                f"{', '.join(m.label for m in preset.models)}"
            )
        preset = dataclasses.replace(
            preset, models=tuple(m for m in preset.models if m.label in keep)
        )
    if args.layers:
        if min(args.layers) < 1:
            raise ValueError(f"--layers must be ≥ 1, got {args.layers}")
        by_layer = dict(zip(preset.layers, preset.steps, strict=True))
        steps = tuple(by_layer.get(layer, preset.steps[-1]) for layer in args.layers)
        preset = dataclasses.replace(preset, layers=tuple(args.layers), steps=steps)
    if args.steps is not None:
        if args.steps < 2:
            raise ValueError(f"--steps must be ≥ 2, got {args.steps}")
        preset = dataclasses.replace(preset, steps=(args.steps,) * len(preset.layers))
    if args.channels is not None:
        preset = dataclasses.replace(preset, channels=args.channels)
    if args.batch is not None:
        preset = dataclasses.replace(preset, batch=args.batch)
    results = run_sweep(preset, seed=args.seed, out=args.out)
    results["preset_name"] = args.preset
    _print(results)
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    if args.plot_dir:
        for path in plot_all(results, args.plot_dir):
            print(f"wrote {path}")
    return 130 if results["interrupted"] else 0
