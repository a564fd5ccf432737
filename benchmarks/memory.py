"""Compiled memory of one training step against the sequence length, the old form beside the new.

  python -m benchmarks.memory [--lengths 1024,4096,16384] [--models gpt2,mamba-130m,...]
                              [--json PATH] [--plot PATH]
  python -m benchmarks.memory --throughput [--json PATH]     # CPU train-step speed, old vs new
  python -m benchmarks.memory --attention [--json PATH]      # attention alone, block sizes

Memory: `jax.jit(jax.value_and_grad(loss)).lower(params, batch).compile().memory_analysis()` of
one step (batch 1, remat=True, float32), argument + output + temp bytes. Nothing runs: params
and batches are shapes only (`jax.eval_shape`), so it runs on a 2-core CPU in minutes. XLA's CPU
buffer assignment stands in for the accelerator's; the accelerator's differs in detail (layouts,
fusion), not in how the memory grows with L.

Forms (both through the public API: `models.preset`, `dataclasses.replace(config, remat=True,
max_positions=L)`, `models.init`, `models.token_logprob_fn` / `models.apply`):
  old  attention `implementation="reference"` (dense query blocks, O(L²)) and the loss from
       the full [B, L, V] logits (`losses.token_nll(models.apply(...))`).
  new  the O(L) attention (`kernels.attention`) and the fused token head
       (`models.token_logprob_fn`, no [B, L, V] array).
The scans are whatever `kernels.scan` gives in both forms. Gaussian-head models (PAPER.md §6,
64 channels): the small presets (gauss-*) and the paper's (paper-*, as `l2m sweep --preset
paper` builds them: GPT-2 124M, Mamba-130m/370m, Mamba2-130m with the Gaussian MLP embedding
and head); they train on the Gaussian NLL of the next vector here (the exact KL adds elementwise
[B, L, C] terms given the exact conditionals).

Predictions at the paper's batch sizes (Gaussian: 4 sequences; PG19 token models: 16 384 tokens
per batch) scale the batch-1 temp bytes linearly with the batch and add AdamW's two float32
moments: an upper bound (some temp buffers do not grow with the batch).

Throughput (`--throughput`): jitted value-and-grad + AdamW update of the tiny and Gaussian
presets at L <= 1024, old and new form compiled in one process and timed alternately (medians;
the first call, with the compile, apart). The Gaussian-head SSMs run the same program in both
forms (nothing of theirs changed): their ratio shows the timing noise of the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from l2m_jax import models
from l2m_jax.experiments import sweep
from l2m_jax.experiments._common import print_table, pyplot, save_figure, write_json
from l2m_jax.train import losses

GiB = 1024**3
LENGTHS = (1024, 4096, 16384)
TOKEN_MODELS = ("gpt2", "mamba-130m", "mamba2-130m")
GAUSS_MODELS = (
    "gauss-gpt2",
    "gauss-mamba-z32",
    "gauss-mamba-z128",
    "gauss-mamba-z512",
    "gauss-mamba-z2048",
    "gauss-mamba2",
)
# The paper's Gaussian-head models (`l2m sweep --preset paper`): GPT-2 124M, Mamba-130m/370m and
# Mamba2-130m with the Gaussian MLP embedding and head.
PAPER_GAUSS = {f"paper-{spec.label}": spec for spec in sweep.PRESETS["paper"].models}
GAUSS_MODELS += tuple(PAPER_GAUSS)
FORMS = ("old", "new")
CHANNELS = 64  # the paper's Gaussian data: 64 independent channels per position
DEVICES = {"H200 (141 GB)": 141e9, "TPU v5p (95 GB)": 95e9}
PG19_TOKENS_PER_BATCH = 16384
GAUSS_BATCH = 4
THROUGHPUT_CASES = (
    ("gpt2-tiny", 256),
    ("gpt2-tiny", 1024),
    ("llama-tiny", 1024),
    ("mamba-tiny", 1024),
    ("mamba2-tiny", 1024),
    ("gauss-gpt2", 256),
    ("gauss-gpt2", 1024),
    ("gauss-mamba-z512", 1024),
    ("gauss-mamba2", 1024),
)


# ----------------------------------------------------------------------------- steps


def model_config(name: str, L: int, form: str, *, remat: bool = True):
    """The preset at length L (learned positions sized to L), old or new form."""
    if name in PAPER_GAUSS:
        spec = PAPER_GAUSS[name]
        base = models.preset(spec.preset, **dict(spec.overrides), channels=CHANNELS)
    else:
        overrides = {"channels": CHANNELS} if name.startswith("gauss-") else {}
        base = models.preset(name, **overrides)
    config = dataclasses.replace(base, remat=remat, max_positions=L)
    if form == "old" and isinstance(config, models.TransformerConfig):
        config = dataclasses.replace(config, implementation="reference")
    return config


def loss_fn(config, form: str):
    """`loss(params, batch)`: token NLL (batch = tokens [B, L]) or Gaussian NLL (batch = BOS +
    vectors [B, L + 1, C])."""
    if config.head == "tokens":
        if form == "new":
            logprob = models.token_logprob_fn(config)
            return lambda params, tokens: -jnp.mean(logprob(params, tokens))

        def full_logits(params, tokens_BxL):
            bos_Bx1 = jnp.full((tokens_BxL.shape[0], 1), config.bos_id, jnp.int32)
            inputs_BxL = jnp.concatenate([bos_Bx1, tokens_BxL[:, :-1]], axis=1)
            return jnp.mean(losses.token_nll(models.apply(config, params, inputs_BxL), tokens_BxL))

        return full_logits

    def gaussian(params, z_BxL1xC):
        pred = models.apply(config, params, z_BxL1xC[:, :-1])
        return jnp.mean(losses.gaussian_nll(z_BxL1xC[:, 1:], pred.mean, pred.std))

    return gaussian


def batch_shape(config, batch: int, L: int) -> jax.ShapeDtypeStruct:
    if config.head == "tokens":
        return jax.ShapeDtypeStruct((batch, L), jnp.int32)
    return jax.ShapeDtypeStruct((batch, L + 1, config.channels), jnp.float32)


def param_shapes(config):
    return jax.eval_shape(functools.partial(models.init, config), jax.random.key(0))


def step_memory(name: str, L: int, form: str, batch: int = 1) -> dict:
    """Compiled memory of value_and_grad(loss) for one model, length and form."""
    config = model_config(name, L, form)
    params = param_shapes(config)
    t0 = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss_fn(config, form))).lower(
        params, batch_shape(config, batch, L)
    )
    stats = lowered.compile().memory_analysis()
    compile_s = time.perf_counter() - t0
    arg, out, temp = (
        int(stats.argument_size_in_bytes),
        int(stats.output_size_in_bytes),
        int(stats.temp_size_in_bytes),
    )
    return {
        "model": name,
        "seq_len": L,
        "form": form,
        "batch": batch,
        "params": int(models.param_count(params)),
        "argument_bytes": arg,
        "output_bytes": out,
        "temp_bytes": temp,
        "total_bytes": arg + out + temp,
        "compile_s": compile_s,
    }


def predict(row: dict) -> dict:
    """Upper bound at the paper's batch: params + grads + AdamW moments (float32) + batch x
    the batch-1 activations (temp and the per-sequence inputs)."""
    param_bytes = 4 * row["params"]
    batch = (
        GAUSS_BATCH
        if row["model"] in GAUSS_MODELS
        else max(1, PG19_TOKENS_PER_BATCH // row["seq_len"])
    )
    per_sequence = row["total_bytes"] - 2 * param_bytes
    need = 4 * param_bytes + batch * per_sequence
    return {
        "paper_batch": batch,
        "predicted_bytes": need,
        **{f"fits {device}": bool(need <= size) for device, size in DEVICES.items()},
    }


# ----------------------------------------------------------------------------- throughput


def _real_batch(config, batch: int, L: int, key):
    if config.head == "tokens":
        return jax.random.randint(key, (batch, L), 0, config.vocab_size, jnp.int32)
    z = jax.random.normal(key, (batch, L, config.channels), jnp.float32)
    return jnp.concatenate([jnp.zeros_like(z[:, :1]), z], axis=1)


def throughput(name: str, L: int, batch: int, repeats: int) -> list[dict]:
    """Train steps of the old and the new form (same params, same batch), compiled first, then
    timed alternately (old, new, old, new, ...) so that load from other work hits both alike;
    medians of `repeats` runs each."""
    import statistics

    import optax

    steps = {}
    for form in FORMS:
        base = models.preset(name)
        config = dataclasses.replace(base, max_positions=max(L, base.num_positions))
        if form == "old" and isinstance(config, models.TransformerConfig):
            config = dataclasses.replace(config, implementation="reference")
        params = jax.jit(models.init, static_argnums=0)(config, jax.random.key(0))
        optimizer = optax.adamw(1e-3)
        loss = loss_fn(config, form)

        @jax.jit
        def step(params, opt_state, data, loss=loss, optimizer=optimizer):
            value, grads = jax.value_and_grad(loss)(params, data)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        args = (params, optimizer.init(params), _real_batch(config, batch, L, jax.random.key(1)))
        t0 = time.perf_counter()
        jax.block_until_ready(step(*args))
        steps[form] = (step, args, time.perf_counter() - t0)
    runs = {form: [] for form in FORMS}
    for _ in range(repeats):
        for form, (step, args, _) in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(*args))
            runs[form].append(time.perf_counter() - t0)
    rows = []
    for form in FORMS:
        median = statistics.median(runs[form])
        rows.append(
            {
                "model": name,
                "seq_len": L,
                "batch": batch,
                "form": form,
                "median_s": median,
                "first_call_s": steps[form][2],
                "tokens_per_s": batch * L / median,
                "runs_s": runs[form],
            }
        )
    rows[1]["speed_vs_old"] = rows[0]["median_s"] / rows[1]["median_s"]
    return rows


ATTENTION_SHAPES = ((4, 1024, 4, 16), (1, 1024, 12, 64), (1, 4096, 12, 64))  # B, L, H, E
BLOCKS = (64, 128, 256, 512)


def attention_blocks(repeats: int) -> list[dict]:
    """Forward + backward of causal attention alone: the reference form beside the blockwise
    form at several block sizes (what picked kernels.attention.api.CPU_BLOCK)."""
    import statistics

    from kernels.attention import causal_attention

    rows = []
    for B, L, H, E in ATTENTION_SHAPES:
        rng = np.random.default_rng(0)
        q, k, v, g = (jnp.asarray(rng.standard_normal((B, L, H, E)), jnp.float32) for _ in "qkvg")
        forms = {"reference": dict(implementation="reference")}
        forms.update({f"block {b}": dict(implementation="xla", block_size=b) for b in BLOCKS})
        fns = {
            name: jax.jit(
                jax.grad(
                    lambda q, k, v, kw=kw, g=g: jnp.sum(causal_attention(q, k, v, **kw) * g),
                    argnums=(0, 1, 2),
                )
            )
            for name, kw in forms.items()
        }
        for fn in fns.values():
            jax.block_until_ready(fn(q, k, v))
        runs = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(q, k, v))
                runs[name].append(time.perf_counter() - t0)
        ref = statistics.median(runs["reference"])
        for name in fns:
            median = statistics.median(runs[name])
            rows.append(
                {
                    "shape": f"B{B} L{L} H{H} E{E}",
                    "form": name,
                    "median_s": median,
                    "speed_vs_reference": ref / median,
                }
            )
    return rows


# ----------------------------------------------------------------------------- report


def plot(rows: list[dict], path: str) -> None:
    plt = pyplot()
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, group in zip(axes, (TOKEN_MODELS, GAUSS_MODELS), strict=True):
        for i, name in enumerate(n for n in names if n in group):
            for form, style in (("old", "--"), ("new", "-")):
                pts = sorted(
                    (r["seq_len"], r["total_bytes"] / GiB)
                    for r in rows
                    if r["model"] == name and r["form"] == form
                )
                if pts:
                    x, y = zip(*pts, strict=True)
                    label = f"{name} ({form})"
                    ax.plot(x, y, style, marker="o", color=colors[i % len(colors)], label=label)
        lengths = sorted({r["seq_len"] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths, [str(v) for v in lengths])
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("compiled memory of one step, GiB (batch 1, remat)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("token models: dashed = full logits + dense attention")
    axes[1].set_title(f"Gaussian-head models ({CHANNELS} channels)")
    fig.tight_layout()
    save_figure(fig, path)


def _csv(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--models", default=",".join(TOKEN_MODELS + GAUSS_MODELS))
    ap.add_argument("--forms", default="old,new")
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--plot", help="log-log plot of bytes against L")
    ap.add_argument("--throughput", action="store_true", help="time CPU train steps instead")
    ap.add_argument("--batch", type=int, default=4, help="throughput batch")
    ap.add_argument(
        "--attention", action="store_true", help="time attention alone: reference vs block sizes"
    )
    ap.add_argument("--repeats", type=int, default=11, help="throughput runs per form")
    args = ap.parse_args(argv)

    if args.attention:
        rows = attention_blocks(args.repeats)
        print_table(
            ["shape", "form", "median ms", "speed vs reference"],
            [[r["shape"], r["form"], 1e3 * r["median_s"], r["speed_vs_reference"]] for r in rows],
        )
        if args.json:
            write_json(args.json, {"attention": rows})
        return
    if args.throughput:
        rows = []
        for name, L in THROUGHPUT_CASES:
            rows += throughput(name, L, args.batch, args.repeats)
        print_table(
            ["model", "L", "batch", "form", "median ms", "first call s", "tokens/s", "new/old"],
            [
                [
                    r["model"],
                    r["seq_len"],
                    r["batch"],
                    r["form"],
                    1e3 * r["median_s"],
                    r["first_call_s"],
                    r["tokens_per_s"],
                    r.get("speed_vs_old", float("nan")),
                ]
                for r in rows
            ],
        )
        if args.json:
            write_json(args.json, {"throughput": rows})
        return

    lengths = [int(v) for v in _csv(args.lengths)]
    forms = _csv(args.forms)
    for form in forms:
        if form not in FORMS:
            raise SystemExit(f"--forms: {form!r} is not one of {FORMS}")
    names = _csv(args.models)
    for name in names:  # unknown names fail before any compile
        if name not in PAPER_GAUSS and name not in models.PRESETS:
            known = ", ".join([*models.PRESETS, *PAPER_GAUSS])
            raise SystemExit(f"--models: unknown model {name!r}; choose from: {known}")
    rows = []
    for name in names:
        for L in lengths:
            for form in forms:
                row = step_memory(name, L, form)
                row.update(predict(row))
                rows.append(row)
                print(
                    f"{name:18s} L={L:6d} {form}: {row['total_bytes'] / GiB:7.2f} GiB "
                    f"(compile {row['compile_s']:.0f} s)",
                    flush=True,
                )
    by = {(r["model"], r["seq_len"], r["form"]): r for r in rows}
    previous = dict(zip(lengths[1:], lengths[:-1], strict=False))
    table = []
    for r in rows:
        base = by.get((r["model"], previous.get(r["seq_len"]), r["form"]))
        growth = r["total_bytes"] / base["total_bytes"] if base else float("nan")
        table.append(
            [
                r["model"],
                r["seq_len"],
                r["form"],
                r["argument_bytes"] / GiB,
                r["output_bytes"] / GiB,
                r["temp_bytes"] / GiB,
                r["total_bytes"] / GiB,
                growth,
                r["paper_batch"],
                r["predicted_bytes"] / 1e9,
                *("yes" if r[f"fits {d}"] else "no" for d in DEVICES),
            ]
        )
    print_table(
        [
            "model",
            "L",
            "form",
            "arg GiB",
            "out GiB",
            "temp GiB",
            "total GiB",
            "x prev L",
            "paper B",
            "pred GB",
            *DEVICES,
        ],
        table,
    )
    if args.json:
        write_json(args.json, {"memory": rows, "devices_bytes": DEVICES})
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
