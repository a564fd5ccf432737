"""Kernels for the hot paths: the SSM scan (fixed state), decoding over a growing KV cache and
whole-sequence causal attention. Each folder holds a plain-JAX reference, the kernel forms and
one dispatcher (`implementation="auto" | "xla" | "pallas"`, `interpret=True` for CPU).

  kernels.scan.selective_scan, kernels.scan.ssd
  kernels.decode_attention.append_kv, kernels.decode_attention.decode_attention
  kernels.attention.causal_attention, kernels.attention.prefill_attention
"""

from kernels import attention, decode_attention, scan

__all__ = ["attention", "decode_attention", "scan"]
