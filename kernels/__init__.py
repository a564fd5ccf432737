"""Kernels for the two hot paths: the SSM scan (fixed state) and decoding over a growing KV
cache. Each folder holds a plain-JAX reference, a Pallas kernel and one dispatcher
(`implementation="auto" | "xla" | "pallas"`, `interpret=True` for CPU).

  kernels.scan.selective_scan, kernels.scan.ssd
  kernels.decode_attention.append_kv, kernels.decode_attention.decode_attention
"""

from kernels import decode_attention, scan

__all__ = ["decode_attention", "scan"]
