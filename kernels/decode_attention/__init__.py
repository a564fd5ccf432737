"""Decoding over a growing KV cache: `append_kv` and flash-decoding `decode_attention` (block
configuration `DecodeBlocks`)."""

from kernels.decode_attention.api import DecodeBlocks, append_kv, decode_attention

__all__ = ["DecodeBlocks", "append_kv", "decode_attention"]
