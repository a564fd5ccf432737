"""Exact bipartite and two-point MI of the hierarchical Gaussian families (Fig. C.6).

For each number of layers l (L = b^l) prints I_BP(L/2; L), the antipodal two-point MI
I(Z_1; Z_L) and the fitted power-law exponent of I_BP over the layers ≥ 2 (± its standard
error). The sub-volume family's exponent is about log_4 3 ≈ 0.79; the log-law family grows by a
nearly constant amount per layer. Both families share the same two-point MI.

Example:
  l2m gaussian-mi --family subvolume --layers 1-6 --json gmi.json --plot gmi.png
"""

from __future__ import annotations

import argparse

from l2m_jax.experiments._common import int_range, print_table, pyplot, save_figure, write_json
from l2m_jax.information import fit_power_law
from l2m_jax.sources import GaussianFamily

DEFAULT_COPIES = {"subvolume": 3, "log": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=["subvolume", "log"], default="subvolume")
    parser.add_argument("--layers", type=int_range, default="1-6", help="e.g. 1-6 (default)")
    parser.add_argument("--branching", type=int, default=4, help="row width b (default 4)")
    parser.add_argument(
        "--copies", type=int, default=None, help="copies k (default 3 for subvolume, 1 for log)"
    )
    parser.add_argument("--coupling", type=float, default=0.3, help="row-boundary coupling")
    parser.add_argument("--channels", type=int, default=1, help="independent channels per token")
    parser.add_argument("--json", type=str, default=None, help="write every figure here")
    parser.add_argument("--plot", type=str, default=None, help="log-log plot of both families")


def measure(
    family: str,
    layers: list[int],
    *,
    branching: int = 4,
    copies: int | None = None,
    coupling: float = 0.3,
    channels: int = 1,
) -> dict:
    """Exact I_BP(L/2; L) and I(Z_1; Z_L) per layer, and the power-law fit over layers ≥ 2."""
    if family not in DEFAULT_COPIES:
        raise ValueError(f"family must be 'subvolume' or 'log', got {family!r}")
    if not layers or min(layers) < 1:
        raise ValueError(f"layers must be integers ≥ 1, got {layers}")
    k = DEFAULT_COPIES[family] if copies is None else copies
    lengths, bp, tp = [], [], []
    for layer in layers:
        fam = GaussianFamily(
            layer, channels, branching=branching, copies=k, coupling=coupling, name=family
        )
        lengths.append(fam.length)
        bp.append(fam.bipartite_mi(fam.length // 2))
        tp.append(fam.two_point_mi(0, fam.length - 1))
    fit_idx = [i for i, layer in enumerate(layers) if layer >= 2]
    if len(fit_idx) < 3:
        fit_idx = list(range(len(layers)))
    exponent = stderr = amplitude = None
    if len(fit_idx) >= 3:
        fit = fit_power_law([lengths[i] for i in fit_idx], [bp[i] for i in fit_idx])
        exponent, stderr, amplitude = fit.exponent, fit.exponent_stderr, fit.amplitude
    tp_fit = fit_power_law(lengths, tp) if len(lengths) >= 3 else None
    return {
        "family": family,
        "branching": branching,
        "copies": k,
        "coupling": coupling,
        "channels": channels,
        "layers": list(layers),
        "L": lengths,
        "bipartite_mi": bp,
        "two_point_mi": tp,
        "exponent": exponent,
        "exponent_stderr": stderr,
        "amplitude": amplitude,
        "fit_layers": [layers[i] for i in fit_idx] if exponent is not None else [],
        "two_point_exponent": None if tp_fit is None else tp_fit.exponent,
        "log_b_k": GaussianFamily(1, branching=branching, copies=k, coupling=0.0).exponent,
    }


def plot(families: dict[str, dict], path: str) -> None:
    plt = pyplot()
    fig, (ax_bp, ax_tp) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rec in families.items():
        label = f"{name} (k={rec['copies']})"
        ax_bp.loglog(rec["L"], rec["bipartite_mi"], "o-", label=label)
        ax_tp.loglog(rec["L"], rec["two_point_mi"], "o-", label=label)
        if rec["exponent"] is not None:
            fit = [rec["amplitude"] * n ** rec["exponent"] for n in rec["L"]]
            ax_bp.loglog(rec["L"], fit, ":", color="gray")
    ax_bp.set(xlabel="L", ylabel="I_BP(L/2; L) [nats]", title="bipartite MI")
    ax_tp.set(xlabel="L", ylabel="I(Z_1; Z_L) [nats]", title="antipodal two-point MI")
    for ax in (ax_bp, ax_tp):
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    common = dict(branching=args.branching, coupling=args.coupling, channels=args.channels)
    rec = measure(args.family, args.layers, copies=args.copies, **common)
    rows = [
        [layer, n, bp, tp]
        for layer, n, bp, tp in zip(
            rec["layers"], rec["L"], rec["bipartite_mi"], rec["two_point_mi"], strict=True
        )
    ]
    print(
        f"{args.family} family: b={rec['branching']}, k={rec['copies']}, "
        f"coupling={rec['coupling']}, channels={rec['channels']}"
    )
    print_table(["layers", "L", "I_BP(L/2;L)", "I_TP(1,L)"], rows)
    if rec["exponent"] is not None:
        print(
            f"fitted exponent over layers {rec['fit_layers']}: "
            f"{rec['exponent']:.4f} ± {rec['exponent_stderr']:.4f} "
            f"(log_b k = {rec['log_b_k']:.4f})"
        )
    other = "log" if args.family == "subvolume" else "subvolume"
    # The comparison family keeps the default copies for its kind (Fig. C.6 shows both).
    families = {args.family: rec, other: measure(other, args.layers, **common)}
    if args.json:
        write_json(args.json, {**rec, "families": families})
        print(f"wrote {args.json}")
    if args.plot:
        plot(families, args.plot)
        print(f"wrote {args.plot}")
    return 0
