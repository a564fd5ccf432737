"""Named model sizes: the paper's models (PAPER.md §6) and small ones for CPU.

Vocabularies: gpt2* use GPT-2's 50 257 tokens; mamba* and mamba2* use GPT-NeoX's 50 280 (as
the Mamba checkpoints); smollm2-135m uses its own 49 152. `NOMINAL_PARAMS` holds the size each
name stands for (parameter counts with tied embeddings); every preset is within 5% of it.
The shapes are the paper's (PAPER.md §6) except mamba-50m and mamba-70m: the paper lists 12 and
24 layers of width 512, which count only 46.1M and 66.4M with the NeoX vocabulary (−7.8%,
−5.1%), so these two have 14 and 26 layers (49.5M, 69.8M) and keep the width and d_state.

Tiny token models (vocab 256, width 64, 2 layers) for tests and CPU runs:
  gpt2-tiny, llama-tiny, mamba-tiny, mamba2-tiny.
Gaussian-experiment models (head="gaussian", 4 channels by default — override `channels`):
  gauss-gpt2        2 layers, width 64, 4 heads, 4096 learned positions (PAPER.md §7)
  gauss-mamba-zS    Mamba-1, 2 layers, width w with expand 1 (d_inner = w), d_state w − 3, so
                    dim(z) = 2 · w · (d_state + d_conv − 1) = 2w² = S exactly:
                    S = 32, 128, 512, 2048 for w = 4, 8, 16, 32
  gauss-mamba2      Mamba-2, 2 layers, width 32, 4 heads of 16, d_state 8 (dim(z) = 1504)
  The SSMs have 16 384 learned positions (L up to 4^7).
"""

from __future__ import annotations

import dataclasses

from l2m_jax.models.ssm import Mamba2Config, MambaConfig
from l2m_jax.models.transformer import TransformerConfig

__all__ = ["NOMINAL_PARAMS", "PRESETS", "preset"]

_GPT2 = dict(style="gpt2", vocab_size=50257, max_positions=1024)
_NEOX = 50280

PRESETS: dict = {
    "gpt2": TransformerConfig(**_GPT2, d_model=768, n_layers=12, n_heads=12),
    "gpt2-medium": TransformerConfig(**_GPT2, d_model=1024, n_layers=24, n_heads=16),
    "gpt2-large": TransformerConfig(**_GPT2, d_model=1280, n_layers=36, n_heads=20),
    "mamba-50m": MambaConfig(vocab_size=_NEOX, d_model=512, n_layers=14),
    "mamba-70m": MambaConfig(vocab_size=_NEOX, d_model=512, n_layers=26),
    "mamba-130m": MambaConfig(vocab_size=_NEOX, d_model=768, n_layers=24),
    "mamba-370m": MambaConfig(vocab_size=_NEOX, d_model=1024, n_layers=48),
    "mamba-790m": MambaConfig(vocab_size=_NEOX, d_model=1536, n_layers=48),
    "mamba-1.4b": MambaConfig(vocab_size=_NEOX, d_model=2048, n_layers=48),
    "mamba2-130m": Mamba2Config(vocab_size=_NEOX, d_model=768, n_layers=24),
    "mamba2-370m": Mamba2Config(vocab_size=_NEOX, d_model=1024, n_layers=48),
    "mamba2-790m": Mamba2Config(vocab_size=_NEOX, d_model=1536, n_layers=48),
    "smollm2-135m": TransformerConfig(
        style="llama",
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        rope_theta=100_000.0,
        norm_eps=1e-5,
        max_positions=0,
    ),
    "gpt2-tiny": TransformerConfig(
        style="gpt2", vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_positions=1024
    ),
    "llama-tiny": TransformerConfig(
        style="llama", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128
    ),
    "mamba-tiny": MambaConfig(vocab_size=256, d_model=64, n_layers=2, d_state=8),
    "mamba2-tiny": Mamba2Config(
        vocab_size=256, d_model=64, n_layers=2, d_state=16, head_dim=16, chunk_size=16
    ),
    "gauss-gpt2": TransformerConfig(
        style="gpt2",
        vocab_size=1,
        d_model=64,
        n_layers=2,
        n_heads=4,
        max_positions=4096,
        head="gaussian",
        channels=4,
    ),
    **{
        f"gauss-mamba-z{2 * w * w}": MambaConfig(
            vocab_size=1,
            d_model=w,
            n_layers=2,
            d_state=w - 3,
            expand=1,
            max_positions=16384,
            head="gaussian",
            channels=4,
        )
        for w in (4, 8, 16, 32)
    },
    "gauss-mamba2": Mamba2Config(
        vocab_size=1,
        d_model=32,
        n_layers=2,
        d_state=8,
        head_dim=16,
        chunk_size=64,
        max_positions=16384,
        head="gaussian",
        channels=4,
    ),
}

NOMINAL_PARAMS: dict[str, float] = {
    "gpt2": 124e6,
    "gpt2-medium": 355e6,
    "gpt2-large": 774e6,
    "mamba-50m": 50e6,
    "mamba-70m": 70e6,
    "mamba-130m": 130e6,
    "mamba-370m": 370e6,
    "mamba-790m": 790e6,
    "mamba-1.4b": 1.4e9,
    "mamba2-130m": 130e6,
    "mamba2-370m": 370e6,
    "mamba2-790m": 790e6,
    "smollm2-135m": 135e6,
}


def preset(name: str, **overrides):
    """The config called `name` with fields replaced by `overrides` (e.g. channels=64)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    try:
        return dataclasses.replace(PRESETS[name], **overrides)
    except TypeError as err:
        fields = ", ".join(f.name for f in dataclasses.fields(PRESETS[name]))
        raise TypeError(f"preset {name!r}: {err}; the fields are: {fields}") from None
