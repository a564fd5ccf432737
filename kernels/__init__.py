"""Kernels for the hot paths: the SSM scan (fixed state), decoding over a growing KV cache and
whole-sequence causal attention. Each folder holds a plain-JAX reference, the kernel forms
(Pallas on TPU: Mosaic; GPU: Triton; attention: JAX's splash and cuDNN kernels) and one
dispatcher (`implementation="auto" | "xla" | "pallas"`, `interpret=True` for CPU).

  kernels.scan.selective_scan, kernels.scan.ssd      (blocks: SelectiveBlocks, SSDBlocks)
  kernels.decode_attention.append_kv, kernels.decode_attention.decode_attention
                                                      (blocks: DecodeBlocks)
  kernels.attention.causal_attention, kernels.attention.prefill_attention

The form is chosen by the platform a computation is lowered for (kernels._dispatch, shared by
every kernel folder); kernels._lowering lowers any function for "tpu" or "cuda" from a CPU and
lists the Pallas kernels in the lowered text (compile checks without the hardware).
"""

from kernels import attention, decode_attention, scan

__all__ = ["attention", "decode_attention", "scan"]
