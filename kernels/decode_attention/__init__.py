"""Decoding over a growing KV cache: `append_kv` and flash-decoding `decode_attention`."""

from kernels.decode_attention.api import append_kv, decode_attention

__all__ = ["append_kv", "decode_attention"]
