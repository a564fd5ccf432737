"""Model presets: parameter counts, history-state size dim(z) at L/2, and the L²M condition.

For each preset: its parameter count (with its own vocabulary; Gaussian-head presets with
--channels inputs), its history-state size dim(z_{L/2}) in scalars over all layers (PAPER.md
§5), and whether dim(z_{L/2}) >= I_BP(L/2; L) of the sub-volume Gaussian data with --channels
independent channels (the L²M condition, counting one nat per state dimension). The Gaussian
family has L = 4^layers positions; for other L the condition is not evaluated (said so in
the output).

  l2m models --seq-len 4096 --channels 64 --json results/models.json
"""

from __future__ import annotations

import dataclasses
import math

from l2m_jax.experiments._common import print_table, write_json


def add_arguments(parser) -> None:
    parser.add_argument(
        "--seq-len", type=int, default=4096, help="sequence length L (a power of 4 for I_BP)"
    )
    parser.add_argument(
        "--channels", type=int, default=64, help="independent Gaussian channels (paper: 64)"
    )
    parser.add_argument(
        "--presets", default=None, help="comma-separated preset names (default: all)"
    )
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")


def _gaussian_layers(seq_len: int) -> int | None:
    layers = round(math.log(seq_len, 4)) if seq_len > 1 else 0
    return layers if layers >= 1 and 4**layers == seq_len else None


def run(args) -> int:
    import jax

    from l2m_jax import models

    L, C = args.seq_len, args.channels
    if L < 2:
        raise ValueError(f"--seq-len must be at least 2, got {L}")
    if C < 1:
        raise ValueError(f"--channels must be at least 1, got {C}")
    names = list(models.PRESETS) if args.presets is None else args.presets.split(",")
    for name in names:
        if name not in models.PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(models.PRESETS)}")

    layers = _gaussian_layers(L)
    if layers is None:
        i_bp_channel = None
        note = (
            f"L={L} is not a power of 4: the sub-volume Gaussian family has L = 4^layers "
            "positions, so I_BP and the L2M condition are not evaluated"
        )
    else:
        from l2m_jax.sources import subvolume_gaussian

        i_bp_channel = float(subvolume_gaussian(layers, 1).bipartite_mi(L // 2))
        note = None
    i_bp = None if i_bp_channel is None else i_bp_channel * C

    key = jax.random.key(0)
    rows, records = [], []
    for name in names:
        config = models.PRESETS[name]
        if config.head == "gaussian":
            config = dataclasses.replace(config, channels=C)
        shapes = jax.eval_shape(lambda c=config: models.init(c, key))
        count = models.param_count(shapes)
        size = models.history_state_size(config, L // 2)
        meets = None if i_bp is None else size.total >= i_bp
        records.append(
            {
                "preset": name,
                "architecture": type(config).__name__,
                "config": dataclasses.asdict(config),
                "params": count,
                "nominal_params": models.NOMINAL_PARAMS.get(name),
                "state_per_layer": size.per_layer,
                "state_total": size.total,
                "state_over_ibp": None if i_bp is None else size.total / i_bp,
                "meets_l2m": meets,
            }
        )
        rows.append(
            [
                name,
                f"{count / 1e6:.2f}M",
                size.total,
                "n/a" if i_bp is None else f"{size.total / i_bp:.3g}",
                "n/a" if meets is None else ("yes" if meets else "NO"),
            ]
        )
    if i_bp is not None:
        print(
            f"sub-volume Gaussian, L={L}, {C} channels: I_BP(L/2; L) = {i_bp_channel:.4g} nats "
            f"per channel x {C} = {i_bp:.6g} nats"
        )
    else:
        print(note)
    print_table(["preset", "params", f"dim(z) at {L // 2}", "dim(z)/I_BP", "meets L2M"], rows)
    if args.json:
        result = {
            "seq_len": L,
            "split": L // 2,
            "channels": C,
            "i_bp_per_channel": i_bp_channel,
            "i_bp": i_bp,
            "note": note,
            "criterion": "dim(z_{L/2}) >= I_BP(L/2; L) (one nat per state dimension)",
            "presets": records,
        }
        print(f"wrote {write_json(args.json, result)}")
    return 0
