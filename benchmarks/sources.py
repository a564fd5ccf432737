"""Sampling throughput of the Gaussian families: the structured map vs a dense Cholesky.

  python -m benchmarks.sources [--layers 6] [--channels 64] [--batch 8] [--json PATH]

The structured sampler applies z = T ε layer by layer (O(L) work per sample); the baseline
multiplies iid noise by the dense L×L Cholesky factor of the exact covariance (O(L²)), the
way a generic Gaussian sampler would. Both are jitted; compile time is reported apart and the
run time is the median of several runs. The factorisation itself is not timed.
"""

from __future__ import annotations

import argparse

import jax

from benchmarks._timing import time_fn
from l2m_jax.experiments._common import print_table, write_json
from l2m_jax.sources import log_gaussian, subvolume_gaussian


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=6, help="L = 4**layers (default 4096)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)

    key = jax.random.key(0)
    rows, records = [], []
    for make in (subvolume_gaussian, log_gaussian):
        fam = make(args.layers, args.channels)
        structured = jax.jit(lambda k, fam=fam: fam.sample(k, args.batch))
        dense = jax.jit(lambda k, fam=fam: fam.dense_sample(k, args.batch))
        t_s = time_fn(structured, key, repeats=args.repeats)
        t_d = time_fn(dense, key, repeats=args.repeats)
        for impl, t in (("structured", t_s), ("dense_cholesky", t_d)):
            rec = {
                "family": fam.name,
                "implementation": impl,
                "seq_len": fam.length,
                "channels": fam.channels,
                "batch": args.batch,
                "compile_s": t.compile_s,
                "median_s": t.median_s,
                "samples_per_s": args.batch / t.median_s,
                "tokens_per_s": args.batch * fam.length / t.median_s,
            }
            records.append(rec)
            rows.append(
                [
                    fam.name,
                    impl,
                    fam.length,
                    fam.channels,
                    t.compile_s,
                    1e3 * t.median_s,
                    rec["samples_per_s"],
                ]
            )
        rows.append([fam.name, "speed-up", "", "", "", "", t_d.median_s / t_s.median_s])
    print(f"backend: {jax.default_backend()}, devices: {jax.device_count()}")
    print_table(["family", "sampler", "L", "C", "compile s", "median ms", "samples/s"], rows)
    if args.json:
        write_json(args.json, {"backend": jax.default_backend(), "rows": records})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
