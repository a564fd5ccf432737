"""What the fixed SSM state and the growing KV cache cost: `python -m benchmarks.scan`.

Sections (`--sections`, comma list):
  scan    the Mamba-1 selective scan and the Mamba-2 SSD scan forward over a sweep of state
          sizes and lengths, for every implementation this machine runs:
            lax.scan          the sequential oracle (kernels.scan.reference.*_sequential)
            associative_scan  lax.associative_scan over the whole length (skipped where
                              B·L·state exceeds 2**23 elements on CPU, 2**28 elsewhere)
            chunked           the chunked XLA forms of kernels.scan.reference
            xla               the dispatcher's XLA form (`implementation="xla"`)
            auto              the dispatcher's choice (`implementation="auto"`)
            pallas            the Pallas kernels (GPU/TPU only: interpret mode is a test
                              path, never timed)
  model   the presets' scan shapes (batch 4 × 1024), forward and forward+backward, with
          `previous`: the form "auto" ran before the chunk-boundary backward (lax.scan's own
          autodiff, or for SSD states over 1024 elements a sequential forward whose backward
          recomputed the chunked form) — the side-by-side check that "auto" is not slower.
  decode  per-token latency against context of one transformer layer's attention over its
          KV cache (flash-decoding) and of one SSM layer's state update, and the context at
          which the KV cache outgrows the SSM state.
  train   one training step (token NLL, forward + backward, remat) of mamba2-130m and
          mamba-130m, implementation "auto" against "xla" (default on GPU/TPU only).

Every kernel row reports what one call must move and compute, from the shapes:
  bytes   inputs read + outputs written in the input dtype (x, dt, B, C in; y out); a
          forward+backward row counts three times the forward's (the backward reads the
          inputs again and writes their gradients).
  FLOPs   of the row's algorithm: 5 per state element per token for the sequential and
          associative forms; for the chunked SSD forms (chunked, xla/auto on accelerators,
          pallas) the matmuls, per token H·(2·T·P + 4·P·N) + G·2·T·N; ×3 for forward+backward.
and the achieved fractions of the copy bandwidth measured in the same run and of the dtype's
peak FLOP/s (known GPUs and TPUs; "-" elsewhere).

`--autotune` (GPU/TPU): times the Pallas kernels over a grid of block configurations
(kernels.scan.SSDBlocks, SelectiveBlocks, kernels.decode_attention.DecodeBlocks) at the
preset's model sizes and reports the best against the defaults.

Compile time is reported apart; times are medians of steady-state runs (benchmarks/_timing).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import time_fn
from kernels import _dispatch
from kernels.decode_attention import DecodeBlocks, decode_attention
from kernels.scan import SelectiveBlocks, SSDBlocks, reference, selective_scan, ssd
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

    def flops_per_token(self, chunked: bool) -> int:
        if self.kernel == "ssd" and chunked:
            H, G, N, T = self.heads, self.groups, self.d_state, self.chunk
            P = self.width // H
            return H * (2 * T * P + 4 * P * N) + G * 2 * T * N
        return 5 * self.state_size


# ----------------------------------------------------------------------------- presets


def _presets():
    """Sweeps per machine: state sweep, length sweep, model shapes, decode contexts, ..."""
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
        train=[("mamba2-tiny", 4, 1024), ("mamba-tiny", 4, 1024)],
        sections="scan,model,decode",
    )
    big = [
        model_shape("mamba-130m", 8, 4096),
        model_shape("mamba2-130m", 8, 4096),
    ]
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
        model=model + big,
        contexts=[1024, 4096, 8192, 16384, 32768, 131072],
        copy_mb=1024,
        train=[("mamba2-130m", 8, 4096), ("mamba-130m", 8, 4096)],
        sections="scan,model,decode,train",
    )
    tpu = dict(gpu, copy_mb=512)  # same sweeps; the copy array fits one TPU core's HBM share
    return {"cpu": cpu, "gpu": gpu, "tpu": tpu}


# Dense peak FLOP/s per chip by dtype (vendor figures). float32 on TPU: the MXU emulates it
# with 6 bfloat16 passes at HIGHEST precision (what the kernels use for float32 inputs).
_PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v5": {"bfloat16": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12},
    "TPU v6e": {"bfloat16": 918e12},
}


def peak_flops(device_kind: str, dtype) -> float | None:
    """The chip's dense peak FLOP/s for `dtype`, or None where unknown (CPUs)."""
    name = jnp.dtype(dtype).name
    for kind in sorted(_PEAKS, key=len, reverse=True):
        if kind.lower() in device_kind.lower():
            peaks = _PEAKS[kind]
            if name in peaks:
                return peaks[name]
            return peaks["bfloat16"] / 6 if kind.startswith("TPU") else None
    return None


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


# ----------------------------------------------------------------------------- forms


def _previous_ssd(x, dt, A, Bm, Cm):
    """The SSD form "auto" ran on CPU before the chunk-boundary backward (for comparison):
    lax.scan with its own autodiff up to 1024 state elements per sequence, else a sequential
    forward whose backward recomputed the chunked form (chunks of 32)."""
    H, P = x.shape[2:]
    if H * P * Bm.shape[-1] <= 1024:
        return reference.ssd_sequential(x, dt, A, Bm, Cm)
    return _previous_ssd_vjp(x, dt, A, Bm, Cm)


@jax.custom_vjp
def _previous_ssd_vjp(x, dt, A, Bm, Cm):
    return reference.ssd_sequential(x, dt, A, Bm, Cm)


def _previous_ssd_bwd(residuals, g):
    form = lambda *a: reference.ssd_chunked(*a, chunk_size=32)
    return jax.vjp(form, *residuals)[1](g)


_previous_ssd_vjp.defvjp(lambda *a: (_previous_ssd_vjp(*a), a), _previous_ssd_bwd)


def _scan_fns(shape: ScanShape, model: bool) -> dict:
    """implementation name -> (f(x, dt, A, B, C) -> (y, h), uses the chunked matmul form)."""
    on_device = _dispatch.platform() in ("gpu", "tpu")
    if shape.kernel == "selective_scan":
        fns = {
            "lax.scan": (reference.selective_scan_sequential, False),
            "associative_scan": (reference.selective_scan_associative, False),
            "chunked": (functools.partial(reference.selective_scan_chunked, chunk_size=64), False),
            "auto": (selective_scan, False),
        }
        if model:
            fns["previous"] = (reference.selective_scan_sequential, False)
        if on_device:
            fns["xla"] = (functools.partial(selective_scan, implementation="xla"), False)
            fns["pallas"] = (functools.partial(selective_scan, implementation="pallas"), False)
        return fns
    T = shape.chunk
    fns = {
        "lax.scan": (reference.ssd_sequential, False),
        "associative_scan": (reference.ssd_associative, False),
        "chunked": (functools.partial(reference.ssd_chunked, chunk_size=T), True),
        "auto": (functools.partial(ssd, chunk_size=T), on_device),
    }
    if model:
        fns["previous"] = (_previous_ssd, False)
    if on_device:
        fns["xla"] = (functools.partial(ssd, chunk_size=T, implementation="xla"), True)
        fns["pallas"] = (functools.partial(ssd, chunk_size=T, implementation="pallas"), True)
    return fns


def _forward(fn):
    return jax.jit(lambda *a: fn(*a)[0])


def _forward_backward(fn):
    def loss(*a):
        y, h = fn(*a)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(h)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


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


def _scan_row(shape, impl, t, passes, dtype, copy_bw, peak, chunked):
    tokens = shape.batch * shape.seq_len
    mult = 1 if passes == "forward" else 3
    bytes_per_call = mult * tokens * shape.bytes_per_token(jnp.dtype(dtype).itemsize)
    flops_per_call = mult * tokens * shape.flops_per_token(chunked)
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
        tokens_per_s=tokens / t.median_s,
        bytes_per_call=bytes_per_call,
        flops_per_call=flops_per_call,
        bytes_per_token=bytes_per_call / tokens,
        bytes_per_s=bytes_per_call / t.median_s,
        copy_fraction=bytes_per_call / t.median_s / copy_bw,
        flops_per_s=flops_per_call / t.median_s,
        peak_fraction=None if peak is None else flops_per_call / t.median_s / peak,
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
        bytes_per_call=bytes_per_token * B,
        bytes_per_s=bytes_per_token * B / t.median_s,
        copy_fraction=bytes_per_token * B / t.median_s / copy_bw,
    )


def _train_rows(models_spec, progress):
    """One training step (token NLL, forward + backward, remat): "auto" against "xla"."""
    from l2m_jax import models

    rows = []
    for name, batch, seq_len in models_spec:
        base = dataclasses.replace(models.preset(name), remat=True, max_positions=seq_len)
        params = models.init(base, jax.random.key(0))
        tokens = jax.random.randint(jax.random.key(1), (batch, seq_len + 1), 0, base.vocab_size)
        fns = {}
        for impl in ("auto", "xla"):
            cfg = dataclasses.replace(base, implementation=impl)

            def loss(params, tokens, cfg=cfg):
                logits = models.apply(cfg, params, tokens[:, :-1])
                logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
                return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

            fns[impl] = jax.jit(jax.value_and_grad(loss))
        progress(f"train step {name} B={batch} L={seq_len}")
        timings = _timed_rounds(fns, (params, tokens), rounds=2)
        for impl, t in timings.items():
            rows.append(
                dict(
                    section="train",
                    model=name,
                    implementation=impl,
                    batch=batch,
                    seq_len=seq_len,
                    compile_s=t.compile_s,
                    median_s=t.median_s,
                    tokens_per_s=batch * seq_len / t.median_s,
                )
            )
    return rows


# ----------------------------------------------------------------------------- autotune


def _autotune_grid(kernel, target, shape):
    """Candidate block configurations for one shape (the likeliest first)."""
    if kernel == "ssd":
        R = shape.heads // shape.groups
        heads = sorted({h for h in (1, 4, 8, R) if R % h == 0})
        for T, hb, warps in itertools.product((64, 128, 256), heads, (4, 8)):
            if target == "tpu":
                if warps == 4 and (hb % 8 == 0 or hb == shape.heads):
                    yield SSDBlocks(T, hb, 8 if shape.heads % 8 == 0 else shape.heads, 0)
                continue
            yield SSDBlocks(T, hb, 1, 1024, warps, 2)
        return
    if kernel == "selective_scan":
        if target == "tpu":
            for bd, K, T in itertools.product((128, 256, 512), (8, 16), (128, 256)):
                if shape.width % bd == 0:
                    yield SelectiveBlocks(bd, K, T)
            return
        for bd, K, warps in itertools.product((16, 32, 64), (8, 16), (1, 2)):
            yield SelectiveBlocks(bd, K, K, warps, 1)
        return
    for block, per_split, warps in itertools.product((32, 64, 128), (1, 4, 16), (4, 8)):
        yield DecodeBlocks(block, per_split, warps)


def _autotune(preset, dtype, progress, budget_s):
    target = _dispatch.platform()
    results = []
    shapes = [s for s in preset["model"] if s.batch * s.seq_len >= 8 * 4096]
    for shape in shapes:
        args = _scan_inputs(shape, dtype)
        B, L = shape.batch, shape.seq_len
        if shape.kernel == "ssd":
            P = shape.width // shape.heads
            default = SSDBlocks.default(
                B, L, shape.heads, P, shape.groups, shape.d_state, shape.chunk, target
            )
            make = lambda b, T=shape.chunk: functools.partial(
                ssd, chunk_size=T, implementation="pallas", blocks=b
            )
        else:
            default = SelectiveBlocks.default(B, L, shape.width, shape.d_state, target, dtype)
            make = lambda b: functools.partial(selective_scan, implementation="pallas", blocks=b)
        results += _tune_one(
            budget_s / 3,
            shape.name,
            default,
            _autotune_grid(shape.kernel, target, shape),
            lambda b, make=make: _forward_backward(make(b)),
            args,
            progress,
        )
    # Decode at context 32768, the benchmark's decode shape.
    B, H, K, E, S = 1, 9, 3, 64, 32768
    k = jax.random.split(jax.random.key(2), 3)
    dargs = (
        jax.random.normal(k[0], (B, H, E), dtype),
        jax.random.normal(k[1], (B, K, S, E), dtype),
        jax.random.normal(k[2], (B, K, S, E), dtype),
        jnp.full((B,), S, jnp.int32),
    )
    default = DecodeBlocks.default(B, K, S, target)
    make = lambda b: jax.jit(functools.partial(decode_attention, implementation="pallas", blocks=b))
    results += _tune_one(
        budget_s / 3,
        f"decode H{H} K{K} E{E} S{S}",
        default,
        _autotune_grid("decode", target, None),
        make,
        dargs,
        progress,
    )
    return results


def _tune_one(budget_s, name, default, grid, build, args, progress):
    """Times `default` and then the grid's configurations until `budget_s` is spent."""
    rows = []
    configs = [default] + [c for c in dict.fromkeys(grid) if c != default]
    start = time.perf_counter()
    for blocks in configs:
        if time.perf_counter() - start > budget_s:
            break
        progress(f"autotune {name} {blocks}")
        try:
            t = time_fn(build(blocks), *args, repeats=5)
        except Exception as e:  # a config the compiler refuses (e.g. too many registers)
            rows.append(
                dict(section="autotune", shape=name, blocks=repr(blocks), error=str(e)[:200])
            )
            continue
        rows.append(
            dict(
                section="autotune",
                shape=name,
                blocks=repr(blocks),
                default=blocks == default,
                median_s=t.median_s,
                compile_s=t.compile_s,
            )
        )
    timed = [r for r in rows if "median_s" in r]
    base = next((r["median_s"] for r in timed if r["default"]), None)
    for r in timed:
        r["speedup_vs_default"] = base / r["median_s"] if base else None
    return rows


# ----------------------------------------------------------------------------- report


def _auto_form(row) -> str:
    """What `implementation="auto"` runs for this row's shape on this machine."""
    from kernels.scan import api

    if _dispatch.platform() != "cpu":
        return "pallas"
    limit = api._CPU_SSD_AUTODIFF_MAX if row["kernel"] == "ssd" else api._CPU_AUTODIFF_MAX
    if row["passes"] == "forward" or row["batch"] * row["seq_len"] * row["state_size"] <= limit:
        return "lax.scan (the same computation as the lax.scan row)"
    return "lax.scan forward keeping chunk start states; backward chunk by chunk in reverse"


def _auto_check(rows):
    """For the model shapes: auto's time against the best of lax.scan and associative_scan,
    and against the previous auto form."""
    out = []
    for shape in sorted({r["shape"] for r in rows if r.get("model_shape")}):
        for passes in ("forward", "forward+backward"):
            sel = {
                r["implementation"]: r
                for r in rows
                if r.get("model_shape") and r["shape"] == shape and r["passes"] == passes
            }
            if "auto" not in sel:
                continue
            ms = {k: r["median_s"] for k, r in sel.items()}
            best = min(ms.get("lax.scan", np.inf), ms.get("associative_scan", np.inf))
            out.append(
                dict(
                    shape=shape,
                    passes=passes,
                    auto_ms=1e3 * ms["auto"],
                    lax_scan_ms=1e3 * ms.get("lax.scan", np.nan),
                    associative_scan_ms=1e3 * ms.get("associative_scan", np.nan),
                    previous_ms=1e3 * ms.get("previous", np.nan),
                    speedup_vs_best=best / ms["auto"],
                    speedup_vs_previous=ms.get("previous", np.nan) / ms["auto"],
                    auto_at_least_as_fast=bool(ms["auto"] <= best * 1.05),
                    auto_runs=_auto_form(sel["auto"]),
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


def _fmt(x):
    return "-" if x is None else x


def _print_tables(rows, summary):
    scan_rows = [r for r in rows if r["section"] == "scan"]
    if scan_rows:
        print("\nscan (median of steady-state runs; compile time apart)")
        print_table(
            ["kernel", "shape", "L", "state", "impl", "pass", "compile s", "ms", "tok/s",
             "MB/call", "GFLOP/call", "GB/s", "copy frac", "peak frac"],
            [
                [r["kernel"], r["shape"], r["seq_len"], r["state_size"], r["implementation"],
                 r["passes"], r["compile_s"], 1e3 * r["median_s"], r["tokens_per_s"],
                 r["bytes_per_call"] / 1e6, r["flops_per_call"] / 1e9, r["bytes_per_s"] / 1e9,
                 r["copy_fraction"], _fmt(r["peak_fraction"])]
                for r in scan_rows
            ],
        )  # fmt: skip
    if summary.get("auto_vs_best"):
        print("\nmodel shapes: auto against the best of lax.scan / associative_scan, and against")
        print("the previous auto form (before the chunk-boundary backward)")
        print_table(
            ["shape", "pass", "auto ms", "lax.scan ms", "assoc ms", "previous ms",
             "vs best", "vs previous", "auto runs"],
            [
                [a["shape"], a["passes"], a["auto_ms"], a["lax_scan_ms"],
                 a["associative_scan_ms"], a["previous_ms"], a["speedup_vs_best"],
                 a["speedup_vs_previous"], a["auto_runs"]]
                for a in summary["auto_vs_best"]
            ],
        )  # fmt: skip
    dec_rows = [r for r in rows if r["section"] == "decode"]
    if dec_rows:
        print("\ndecode: one layer, per generated token")
        print_table(
            ["layer", "impl", "context", "state/cache elems", "compile s", "ms/token",
             "B/token", "GB/s", "copy frac"],
            [
                [r["layer"], r["implementation"], r["seq_len"], r["state_size"], r["compile_s"],
                 r["latency_ms"], r["bytes_per_token"], r["bytes_per_s"] / 1e9,
                 r["copy_fraction"]]
                for r in dec_rows
            ],
        )  # fmt: skip
        print(
            "KV cache bytes equal the SSM state bytes at context "
            f"{summary['crossover_context']:.0f}; measured attention latency exceeds the SSM "
            "step from context "
            f"{summary['measured_latency_crossover_context']}"
        )
    train_rows = [r for r in rows if r["section"] == "train"]
    if train_rows:
        print("\ntraining step (token NLL, forward + backward, remat): auto against xla")
        print_table(
            ["model", "impl", "B", "L", "compile s", "ms/step", "tok/s"],
            [
                [r["model"], r["implementation"], r["batch"], r["seq_len"], r["compile_s"],
                 1e3 * r["median_s"], r["tokens_per_s"]]
                for r in train_rows
            ],
        )  # fmt: skip
    tune = [r for r in rows if r["section"] == "autotune" and "median_s" in r]
    if tune:
        print("\nautotune: the five fastest block configurations per shape (fwd+bwd for scans)")
        out = []
        for shape in dict.fromkeys(r["shape"] for r in tune):
            best = sorted((r for r in tune if r["shape"] == shape), key=lambda r: r["median_s"])
            out += [
                [shape, r["blocks"], r["default"], 1e3 * r["median_s"], r["speedup_vs_default"]]
                for r in best[:5]
            ]
        print_table(["shape", "blocks", "default", "ms", "vs default"], out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=("auto", "cpu", "gpu", "tpu"),
        default="auto",
        help="sweep sizes: 'cpu' (default on CPU, ~3 min on 2 cores), 'gpu', 'tpu'",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--sections", default=None, help="comma list of scan, model, decode, train "
        "(default: scan,model,decode; with train on GPU/TPU; '' for none, e.g. with --autotune)"
    )  # fmt: skip
    parser.add_argument(
        "--autotune", action="store_true", help="time block configurations (GPU/TPU only)"
    )
    parser.add_argument(
        "--autotune-seconds", type=float, default=120.0, help="time budget of --autotune"
    )
    parser.add_argument("--json", metavar="PATH", help="write every row and the summary")
    parser.add_argument("--plot", metavar="PATH", help="PNG: tokens/s vs state, decode latency")
    args = parser.parse_args(argv)
    platform = _dispatch.platform()
    preset = _presets()[platform if args.preset == "auto" else args.preset]
    dtype = jnp.dtype(args.dtype)
    chosen = preset["sections"] if args.sections is None else args.sections
    sections = {s for s in chosen.split(",") if s}
    if not sections <= {"scan", "model", "decode", "train"}:
        parser.error(f"--sections takes scan, model, decode, train; got {args.sections!r}")
    if args.autotune and platform == "cpu":
        parser.error("--autotune times the Pallas kernels: it needs a GPU or TPU")

    from tqdm import tqdm

    bar = tqdm(desc="benchmarks.scan", unit="case", file=sys.stderr, leave=False)
    progress = lambda text: (bar.set_postfix_str(text), bar.update(1))
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind, dtype)
    copy_bw = copy_bandwidth(preset["copy_mb"])
    print(f"device: {kind} ({platform}); dtype {dtype.name}; peak {_fmt(peak and peak / 1e12)} "
          "TFLOP/s")  # fmt: skip
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
        fns, chunked = {}, {}
        for impl, (fn, uses_chunks) in _scan_fns(shape, is_model).items():
            if impl == "associative_scan" and shape.batch * shape.seq_len * shape.state_size > (
                2**28 if platform != "cpu" else 2**23
            ):
                continue  # B·L·state intermediates: too big (too slow) for this machine
            if is_model and impl == "chunked":
                continue  # the model shapes compare auto with lax.scan and associative_scan
            if passes == "forward" and impl == "previous":
                continue  # the previous form had the same forward as lax.scan
            if is_model and impl == "pallas":
                continue  # on GPU/TPU "auto" is the Pallas kernel
            big = shape.batch * shape.seq_len >= 8 * 4096
            if is_model and big and impl not in ("auto", "xla"):
                continue  # the 130m shapes: the kernels against the XLA forms only
            fns[impl], chunked[impl] = wrap(fn), uses_chunks
        progress(f"{shape.name} L={shape.seq_len} {passes}")
        timings = _timed_rounds(fns, _scan_inputs(shape, dtype), rounds=3 if is_model else 1)
        for impl, t in timings.items():
            row = _scan_row(shape, impl, t, passes, dtype, copy_bw, peak, chunked[impl])
            row["model_shape"] = is_model
            rows.append(row)
    summary = dict(
        device=kind,
        platform=platform,
        copy_bytes_per_s=copy_bw,
        peak_flops_per_s=peak,
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
    if "train" in sections:
        rows += _train_rows(preset["train"], progress)
        step = {(r["model"], r["implementation"]): r["median_s"] for r in rows
                if r["section"] == "train"}  # fmt: skip
        summary["train_speedup_auto_vs_xla"] = {
            m: step[m, "xla"] / step[m, "auto"] for m, _ in step
        }
    if args.autotune:
        rows += _autotune(preset, dtype, progress, args.autotune_seconds)
    bar.close()

    _print_tables(rows, summary)
    if args.json:
        write_json(args.json, dict(summary=summary, rows=rows))
        print(f"wrote {args.json}")
    if args.plot and "decode" in sections:
        print(f"wrote {_plot(args.plot, rows, summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
