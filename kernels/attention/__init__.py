"""Whole-sequence causal attention with O(L) memory: `causal_attention` (training, scoring) and
`prefill_attention` (a block continuing a KV cache), with the quadratic references beside."""

from kernels.attention.api import IMPLEMENTATIONS, causal_attention, prefill_attention
from kernels.attention.blockwise import blockwise_attention
from kernels.attention.reference import causal_attention_reference, prefill_attention_reference

__all__ = [
    "IMPLEMENTATIONS",
    "blockwise_attention",
    "causal_attention",
    "causal_attention_reference",
    "prefill_attention",
    "prefill_attention_reference",
]
