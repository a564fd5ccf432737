"""Kernels for the two hot paths: the SSM scan (fixed state) and decoding over a growing KV
cache. Each folder holds a plain-JAX reference, Pallas kernels (TPU: Mosaic; GPU: Triton) and
one dispatcher (`implementation="auto" | "xla" | "pallas"`, `interpret=True` for CPU).

  kernels.scan.selective_scan, kernels.scan.ssd      (blocks: SelectiveBlocks, SSDBlocks)
  kernels.decode_attention.append_kv, kernels.decode_attention.decode_attention
                                                      (blocks: DecodeBlocks)

The form is chosen by the platform a computation is lowered for (kernels._dispatch, shared by
every kernel folder); kernels._lowering lowers any function for "tpu" or "cuda" from a CPU and
lists the Pallas kernels in the lowered text (compile checks without the hardware).
"""

from kernels import decode_attention, scan

__all__ = ["decode_attention", "scan"]
