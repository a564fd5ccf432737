"""What the fixed SSM state and the growing KV cache cost: `python -m benchmarks.scan`.

Scan section: the Mamba-1 selective scan and the Mamba-2 SSD scan over a sweep of state sizes
(d_state, heads, width) and sequence lengths, for every implementation this machine runs:
  lax.scan          the sequential oracle (kernels.scan.reference.*_sequential)
  associative_scan  lax.associative_scan over the whole length (selective scan and SSD;
                    skipped where B·L·state exceeds 2**23 elements on CPU, 2**28 elsewhere)
  chunked           the chunked XLA form (SSD algorithm / chunks of associative scans)
  auto              the dispatcher's choice (`implementation="auto"`)
  pallas            the Pallas kernel (GPU/TPU only: interpret mode is a test path, not a
                    performance path, so it is never timed)
Each row: tokens/s, the bytes a token must move at least (inputs read + output written, in
the input dtype), the achieved bytes/s as a fraction of a copy bandwidth measured in the same
run, and FLOP/s counted as the recurrence's 5 FLOPs per state element per token (decay,
input, output; one definition for every implementation, so the figures compare). A
forward+backward row counts three times the forward's bytes and FLOPs.
The model shapes (the presets' scan shapes at batch 4, forward and forward+backward) check that
"auto" is at least as fast as the best of lax.scan and associative_scan.

Decode section: per-token latency against context length of one transformer layer's attention
over its KV cache (flash-decoding; reads 2·L·K·E·e bytes) and of one SSM layer's state update
(reads and writes 2·H·P·N·e bytes, whatever the context), and the context at which the KV
cache outgrows the SSM state.

Compile time is reported apart; times are medians of steady-state runs (benchmarks/_timing).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import time_fn
from kernels import _dispatch
from kernels.decode_attention import decode_attention
from kernels.scan import api, reference, selective_scan, ssd
from l2m_jax.experiments._common import print_table, pyplot, save_figure, write_json


class ScanShape(NamedTuple):
    kernel: str  # "selective_scan" | "ssd"
    name: str
    batch: int
    seq_len: int
    width: int  # D (selective) or H·P (ssd)
    d_state: int
    heads: int = 1  # H (ssd)
    groups: int = 1  # G (ssd)
    chunk: int = 64

    @property
    def state_size(self) -> int:
        return self.width * self.d_state

    def bytes_per_token(self, e: int) -> int:
        if self.kernel == "selective_scan":  # x, dt in; y out; B, C in
            return e * (3 * self.width + 2 * self.d_state)
        return e * (2 * self.width + self.heads + 2 * self.groups * self.d_state)


def _presets():
    """Sweeps per machine: (state sweep, length sweep, model shapes, decode contexts)."""
    from l2m_jax import models

    def model_shape(name, batch, seq_len):
        cfg = models.preset(name)
        inner = cfg.expand * cfg.d_model
        if type(cfg).__name__ == "MambaConfig":
            return ScanShape("selective_scan", name, batch, seq_len, inner, cfg.d_state)
        H = inner // cfg.head_dim
        return ScanShape(
            "ssd", name, batch, seq_len, inner, cfg.d_state, H, cfg.n_groups, cfg.chunk_size
        )

    model = [
        model_shape("gauss-mamba-z512", 4, 1024),
        model_shape("gauss-mamba-z2048", 4, 1024),
        model_shape("mamba-tiny", 4, 1024),
        model_shape("gauss-mamba2", 4, 1024),
        model_shape("mamba2-tiny", 4, 1024),
    ]
    cpu = dict(
        states=[
            ScanShape("selective_scan", "sel D128 N4", 2, 1024, 128, 4),
            ScanShape("selective_scan", "sel D128 N16", 2, 1024, 128, 16),
            ScanShape("selective_scan", "sel D512 N16", 2, 1024, 512, 16),
            ScanShape("ssd", "ssd H4 P32 N16", 2, 1024, 128, 16, 4),
            ScanShape("ssd", "ssd H8 P32 N64", 2, 1024, 256, 64, 8),
            ScanShape("ssd", "ssd H16 P32 N64", 2, 1024, 512, 64, 16),
        ],
        lengths=[256, 4096],
        length_sweep=("sel D128 N16", "ssd H8 P32 N64"),
        model=model,
        contexts=[128, 512, 2048, 8192, 16384],
        copy_mb=64,
    )
    gpu = dict(
        states=[
            ScanShape("selective_scan", "sel D1536 N16", 8, 4096, 1536, 16),
            ScanShape("selective_scan", "sel D2048 N64", 8, 4096, 2048, 64),
            ScanShape("ssd", "ssd H24 P64 N64", 8, 4096, 1536, 64, 24, 1, 64),
            ScanShape("ssd", "ssd H24 P64 N128", 8, 4096, 1536, 128, 24, 1, 64),
            ScanShape("ssd", "ssd H32 P64 N128", 8, 4096, 2048, 128, 32, 1, 64),
        ],
        lengths=[1024, 16384],
        length_sweep=("sel D1536 N16", "ssd H24 P64 N128"),
        model=model,
        contexts=[1024, 4096, 8192, 16384, 32768, 131072],
        copy_mb=1024,
    )
    return {"cpu": cpu, "gpu": gpu, "tpu": gpu}


# ----------------------------------------------------------------------------- inputs


def _scan_inputs(shape: ScanShape, dtype):
    k = jax.random.split(jax.random.key(0), 5)
    B, L, N = shape.batch, shape.seq_len, shape.d_state
    if shape.kernel == "selective_scan":
        D = shape.width
        return (
            jax.random.normal(k[0], (B, L, D), dtype),
            (0.1 * jax.nn.softplus(jax.random.normal(k[1], (B, L, D)))).astype(dtype),
            -jnp.exp(jax.random.normal(k[2], (D, N))),
            jax.random.normal(k[3], (B, L, N), dtype),
            jax.random.normal(k[4], (B, L, N), dtype),
        )
    H, G = shape.heads, shape.groups
    P = shape.width // H
    return (
        jax.random.normal(k[0], (B, L, H, P), dtype),
        (0.1 * jax.nn.softplus(jax.random.normal(k[1], (B, L, H)))).astype(dtype),
        -jnp.exp(jax.random.normal(k[2], (H,))),
        jax.random.normal(k[3], (B, L, G, N), dtype),
        jax.random.normal(k[4], (B, L, G, N), dtype),
    )


def _scan_fns(shape: ScanShape) -> dict:
    """implementation name -> f(x, dt, A, B, C) -> (y, h), for what this machine runs."""
    on_device = _dispatch.platform() in ("gpu", "tpu")
    if shape.kernel == "selective_scan":
        fns = {
            "lax.scan": reference.selective_scan_sequential,
            "associative_scan": reference.selective_scan_associative,
            "chunked": functools.partial(reference.selective_scan_chunked, chunk_size=64),
            "auto": selective_scan,
        }
        if on_device:
            fns["pallas"] = functools.partial(selective_scan, implementation="pallas")
        return fns
    fns = {
        "lax.scan": reference.ssd_sequential,
        "associative_scan": reference.ssd_associative,
        "chunked": functools.partial(reference.ssd_chunked, chunk_size=shape.chunk),
        "auto": functools.partial(ssd, chunk_size=shape.chunk),
    }
    if on_device:
        fns["pallas"] = functools.partial(ssd, chunk_size=shape.chunk, implementation="pallas")
    return fns


def _forward(fn):
    return jax.jit(lambda *a: fn(*a)[0])


def _forward_backward(fn):
    def loss(*a):
        y, h = fn(*a)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 3, 4)))


# ----------------------------------------------------------------------------- measurements


def copy_bandwidth(megabytes: int) -> float:
    """Bytes/s of `a + 1` on a float32 array (read once, written once) on the default device."""
    a = jnp.zeros((megabytes * 2**20 // 4,), jnp.float32)
    t = _timed_rounds({"copy": jax.jit(lambda a: a + 1.0)}, (a,), rounds=3)["copy"]
    return 2 * a.nbytes / t.median_s


def _timed_rounds(fns: dict, args, rounds: int) -> dict:
    """Times every function in `fns` on `args`, interleaved over `rounds` rounds.

    Each round takes a median (`time_fn`); the best round's median is kept, so a burst of load
    from other processes on a shared machine hits one round, not the comparison. The order
    rotates between rounds (a big associative scan leaves cold caches to whoever runs next).
    """
    out = {}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            t = time_fn(fns[name], *args, repeats=5)
            if name not in out:
                out[name] = t
            elif t.median_s < out[name].median_s:
                out[name] = out[name]._replace(median_s=t.median_s, runs_s=t.runs_s)
    return out


def _scan_row(shape, impl, t, passes, dtype, copy_bw):
    tokens = shape.batch * shape.seq_len
    tokens_per_s = tokens / t.median_s
    bytes_per_token = shape.bytes_per_token(jnp.dtype(dtype).itemsize)
    if passes != "forward":  # the backward reads the inputs again and writes their gradients
        bytes_per_token *= 3
    flops_per_token = 5 * shape.state_size * (1 if passes == "forward" else 3)
    return dict(
        section="scan",
        kernel=shape.kernel,
        shape=shape.name,
        implementation=impl,
        passes=passes,
        dtype=jnp.dtype(dtype).name,
        batch=shape.batch,
        seq_len=shape.seq_len,
        width=shape.width,
        d_state=shape.d_state,
        heads=shape.heads,
        state_size=shape.state_size,
        compile_s=t.compile_s,
        median_s=t.median_s,
        tokens_per_s=tokens_per_s,
        bytes_per_token=bytes_per_token,
        bytes_per_s=bytes_per_token * tokens_per_s,
        copy_fraction=bytes_per_token * tokens_per_s / copy_bw,
        flops_per_s=flops_per_token * tokens_per_s,
    )


class DecodeShape(NamedTuple):
    heads: int  # query heads H (attention)
    kv_heads: int  # K
    head_dim: int  # E
    ssm_heads: int  # H (SSM)
    ssm_head_dim: int  # P
    d_state: int  # N
    batch: int = 1


def _decode_rows(shape: DecodeShape, contexts, dtype, copy_bw, progress):
    e = jnp.dtype(dtype).itemsize
    B, H, K, E = shape.batch, shape.heads, shape.kv_heads, shape.head_dim
    Hs, P, N = shape.ssm_heads, shape.ssm_head_dim, shape.d_state
    k = jax.random.split(jax.random.key(1), 6)
    rows = []
    impls = ["xla"]  # on CPU "auto" is "xla"
    if _dispatch.platform() in ("gpu", "tpu"):
        impls.append("pallas")  # what "auto" picks there
    S_max = max(contexts)
    kc = jax.random.normal(k[0], (B, K, S_max, E), dtype)
    vc = jax.random.normal(k[1], (B, K, S_max, E), dtype)
    q = jax.random.normal(k[2], (B, H, E), dtype)
    for name in impls:
        fn = jax.jit(functools.partial(decode_attention, implementation=name))
        for ctx in contexts:
            progress(f"decode attention {name} context {ctx}")
            # The cache is sized to the context (the kernel never reads past the length).
            args = (q, kc[:, :, :ctx], vc[:, :, :ctx], jnp.full((B,), ctx, jnp.int32))
            t = time_fn(fn, *args, repeats=7)
            bpt = 2 * ctx * K * E * e
            rows.append(_decode_row("attention", name, ctx, K * E * 2 * ctx, bpt, t, B, copy_bw))
    # One SSM layer's decode step: h = exp(dt·A) h + dt x ⊗ B, y = h C (Mamba-2 form).
    h = jax.random.normal(k[3], (B, Hs, P, N), jnp.float32).astype(dtype)
    x = jax.random.normal(k[4], (B, Hs, P), dtype)
    bc = jax.random.normal(k[5], (B, 2, N), dtype)
    dt = jnp.full((B, Hs), 0.1, dtype)
    A = -jnp.ones((Hs,), jnp.float32)

    @jax.jit
    def ssm_step(h, x, dt, bc):
        decay = jnp.exp(dt.astype(jnp.float32) * A[None])[..., None, None]
        inject = (dt[..., None] * x)[..., None].astype(jnp.float32) * bc[:, None, None, 0]
        h = (decay * h.astype(jnp.float32) + inject).astype(h.dtype)
        return h, jnp.einsum("bhpn,bn->bhp", h, bc[:, 1])

    progress("decode SSM step")
    t = time_fn(ssm_step, h, x, dt, bc, repeats=7)
    for ctx in contexts:
        row = _decode_row("ssm", "xla", ctx, Hs * P * N, 2 * Hs * P * N * e, t, B, copy_bw)
        rows.append(row)
    return rows


def _decode_row(layer, impl, ctx, state_size, bytes_per_token, t, B, copy_bw):
    return dict(
        section="decode",
        kernel="decode_attention" if layer == "attention" else "ssm_step",
        layer=layer,
        implementation=impl,
        seq_len=ctx,
        state_size=state_size,
        compile_s=t.compile_s,
        median_s=t.median_s,
        latency_ms=1e3 * t.median_s,
        tokens_per_s=B / t.median_s,
        bytes_per_token=bytes_per_token,
        bytes_per_s=bytes_per_token * B / t.median_s,
        copy_fraction=bytes_per_token * B / t.median_s / copy_bw,
    )


# ----------------------------------------------------------------------------- report


def _auto_form(row) -> str:
    """What `implementation="auto"` runs for this row's shape on this machine."""
    if _dispatch.platform() != "cpu":
        return "pallas"
    if row["passes"] == "forward":
        return "lax.scan (the same computation as the lax.scan row)"
    return "lax.scan forward keeping chunk start states; backward chunk by chunk in reverse"


def _auto_check(rows):
    """For the model shapes: auto's time against the best of lax.scan and associative_scan."""
    out = []
    for shape in sorted({r["shape"] for r in rows if r.get("model_shape")}):
        for passes in ("forward", "forward+backward"):
            sel = {
                r["implementation"]: r["median_s"]
                for r in rows
                if r.get("model_shape") and r["shape"] == shape and r["passes"] == passes
            }
            if "auto" not in sel:
                continue
            best = min(sel.get("lax.scan", np.inf), sel.get("associative_scan", np.inf))
            out.append(
                dict(
                    shape=shape,
                    passes=passes,
                    auto_ms=1e3 * sel["auto"],
                    lax_scan_ms=1e3 * sel.get("lax.scan", np.nan),
                    associative_scan_ms=1e3 * sel.get("associative_scan", np.nan),
                    speedup_vs_best=best / sel["auto"],
                    auto_at_least_as_fast=bool(sel["auto"] <= best * 1.05),
                    auto_runs=_auto_form(
                        next(r for r in rows if r["shape"] == shape and r["passes"] == passes)
                    ),
                )
            )
    return out


def _plot(path, rows, summary):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    scan = [r for r in rows if r["section"] == "scan" and r["passes"] == "forward"]
    for kernel, marker in (("selective_scan", "o"), ("ssd", "s")):
        for impl in sorted({r["implementation"] for r in scan}):
            pts = sorted(
                (r["state_size"], r["tokens_per_s"])
                for r in scan
                if r["kernel"] == kernel
                and r["implementation"] == impl
                and r["seq_len"] == summary["scan_seq_len"]
                and not r.get("model_shape")
            )
            if pts:
                ax1.plot(*zip(*pts, strict=True), marker=marker, label=f"{kernel} {impl}")
    ax1.set(xscale="log", yscale="log", xlabel="state size per layer (elements)")
    ax1.set(ylabel="tokens/s (forward)", title=f"scan, L = {summary['scan_seq_len']}")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7)
    dec = [r for r in rows if r["section"] == "decode"]
    for layer, impl in sorted({(r["layer"], r["implementation"]) for r in dec}):
        pts = sorted(
            (r["seq_len"], r["latency_ms"])
            for r in dec
            if r["layer"] == layer and r["implementation"] == impl
        )
        ax2.plot(*zip(*pts, strict=True), marker="o", label=f"{layer} ({impl})")
    ax2.axvline(summary["crossover_context"], color="gray", ls="--", label="KV cache = SSM state")
    ax2.set(xscale="log", yscale="log", xlabel="context length", ylabel="ms per token")
    ax2.set(title="decode: one layer")
    ax2.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan", description=__doc__)
    parser.add_argument(
        "--preset",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="sweep sizes: 'cpu' (default on CPU, ~3 min on 2 cores), 'gpu' (accelerators)",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--sections", default="scan,model,decode", help="comma list")
    parser.add_argument("--json", metavar="PATH", help="write every row and the summary")
    parser.add_argument("--plot", metavar="PATH", help="PNG: tokens/s vs state, decode latency")
    args = parser.parse_args(argv)
    platform = _dispatch.platform()
    preset = _presets()[platform if args.preset == "auto" else args.preset]
    dtype = jnp.dtype(args.dtype)
    sections = set(args.sections.split(","))
    if not sections <= {"scan", "model", "decode"}:
        parser.error(f"--sections takes scan, model, decode; got {args.sections!r}")

    from tqdm import tqdm

    bar = tqdm(desc="benchmarks.scan", unit="case", file=sys.stderr, leave=False)
    progress = lambda text: (bar.set_postfix_str(text), bar.update(1))
    copy_bw = copy_bandwidth(preset["copy_mb"])
    print(f"device: {jax.devices()[0].device_kind} ({platform}); dtype {dtype.name}")
    print(f"copy bandwidth (a + 1, {preset['copy_mb']} MB float32): {copy_bw / 1e9:.2f} GB/s")
    if platform == "cpu":
        print("Pallas kernels are not timed on CPU: interpret mode is a test path only.")
    rows = []
    cases = []
    if "scan" in sections:
        for shape in preset["states"]:
            lengths = preset["lengths"] if shape.name in preset["length_sweep"] else []
            for L in [shape.seq_len, *lengths]:
                cases.append((shape._replace(seq_len=L), "forward", False))
    if "model" in sections:
        for shape in preset["model"]:
            for passes in ("forward", "forward+backward"):
                cases.append((shape, passes, True))
    for shape, passes, is_model in cases:
        wrap = _forward if passes == "forward" else _forward_backward
        fns = {}
        for impl, fn in _scan_fns(shape).items():
            if impl == "associative_scan" and shape.batch * shape.seq_len * shape.state_size > (
                2**28 if platform != "cpu" else 2**23
            ):
                continue  # B·L·state intermediates: too big (too slow) for this machine
            if is_model and impl == "chunked":
                continue  # the model shapes compare auto with lax.scan and associative_scan
            fns[impl] = wrap(fn)
        progress(f"{shape.name} L={shape.seq_len} {passes}")
        timings = _timed_rounds(fns, _scan_inputs(shape, dtype), rounds=3 if is_model else 1)
        for impl, t in timings.items():
            row = _scan_row(shape, impl, t, passes, dtype, copy_bw)
            row["model_shape"] = is_model
            rows.append(row)
    summary = dict(
        device=jax.devices()[0].device_kind,
        platform=platform,
        copy_bytes_per_s=copy_bw,
        scan_seq_len=preset["states"][0].seq_len,
        auto_vs_best=_auto_check(rows),
    )
    if "decode" in sections:
        dshape = DecodeShape(
            heads=9, kv_heads=3, head_dim=64, ssm_heads=24, ssm_head_dim=64, d_state=128
        )
        rows += _decode_rows(dshape, preset["contexts"], dtype, copy_bw, progress)
        kv_per_token = 2 * dshape.kv_heads * dshape.head_dim
        ssm_state = dshape.ssm_heads * dshape.ssm_head_dim * dshape.d_state
        ssm_s = next(r["median_s"] for r in rows if r.get("layer") == "ssm")
        measured = [
            r["seq_len"]
            for r in rows
            if r.get("layer") == "attention"
            and r["median_s"]
            == min(
                a["median_s"]
                for a in rows
                if a.get("layer") == "attention" and a["seq_len"] == r["seq_len"]
            )
            and r["median_s"] > ssm_s
        ]
        summary.update(
            decode_shape=dshape._asdict(),
            crossover_context=ssm_state / kv_per_token,
            measured_latency_crossover_context=min(measured) if measured else None,
        )
    bar.close()

    scan_rows = [r for r in rows if r["section"] == "scan"]
    if scan_rows:
        print("\nscan (median of steady-state runs; compile time apart)")
        print_table(
            [
                "kernel",
                "shape",
                "L",
                "state",
                "impl",
                "pass",
                "compile s",
                "ms",
                "tok/s",
                "B/tok",
                "GB/s",
                "copy frac",
                "GFLOP/s",
            ],
            [
                [
                    r["kernel"],
                    r["shape"],
                    r["seq_len"],
                    r["state_size"],
                    r["implementation"],
                    r["passes"],
                    r["compile_s"],
                    1e3 * r["median_s"],
                    r["tokens_per_s"],
                    r["bytes_per_token"],
                    r["bytes_per_s"] / 1e9,
                    r["copy_fraction"],
                    r["flops_per_s"] / 1e9,
                ]
                for r in scan_rows
            ],
        )
    if summary["auto_vs_best"]:
        print("\nmodel shapes: auto vs the best of lax.scan and associative_scan")
        print_table(
            ["shape", "pass", "auto ms", "lax.scan ms", "assoc ms", "speed-up", "auto runs"],
            [
                [
                    a["shape"],
                    a["passes"],
                    a["auto_ms"],
                    a["lax_scan_ms"],
                    a["associative_scan_ms"],
                    a["speedup_vs_best"],
                    a["auto_runs"],
                ]
                for a in summary["auto_vs_best"]
            ],
        )
    dec_rows = [r for r in rows if r["section"] == "decode"]
    if dec_rows:
        print("\ndecode: one layer, per generated token")
        print_table(
            [
                "layer",
                "impl",
                "context",
                "state/cache elems",
                "compile s",
                "ms/token",
                "B/token",
                "GB/s",
                "copy frac",
            ],
            [
                [
                    r["layer"],
                    r["implementation"],
                    r["seq_len"],
                    r["state_size"],
                    r["compile_s"],
                    r["latency_ms"],
                    r["bytes_per_token"],
                    r["bytes_per_s"] / 1e9,
                    r["copy_fraction"],
                ]
                for r in dec_rows
            ],
        )
        print(
            "KV cache bytes equal the SSM state bytes at context "
            f"{summary['crossover_context']:.0f}; measured attention latency exceeds the SSM "
            "step from context "
            f"{summary['measured_latency_crossover_context']}"
        )
    if args.json:
        write_json(args.json, dict(summary=summary, rows=rows))
        print(f"wrote {args.json}")
    if args.plot and "decode" in sections:
        print(f"wrote {_plot(args.plot, rows, summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
