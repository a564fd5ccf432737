"""History-state size dim(z_ℓ) of each architecture (PAPER.md §5).

The history state is everything a model keeps about the positions before ℓ:
  transformer  all keys and values so far: 2 · n_kv_heads · head_dim · ℓ per layer
  Mamba-1      SSM state d_inner · d_state + conv window (d_conv − 1) · d_inner per layer
  Mamba-2      SSM state n_heads · head_dim · d_state + conv window (d_conv − 1) · conv_dim
               per layer, conv_dim = d_inner + 2 · n_groups · d_state (x, B and C are convolved)
counted in scalars (floats). Multiply by n_layers for the total.
"""

from __future__ import annotations

from typing import NamedTuple

from l2m_jax.models import _layers
from l2m_jax.models.ssm import Mamba2Config, MambaConfig
from l2m_jax.models.transformer import TransformerConfig

__all__ = ["StateSize", "history_state_size"]


class StateSize(NamedTuple):
    """dim(z) in scalars: per layer and over all layers."""

    per_layer: int
    total: int


def history_state_size(config, position: int) -> StateSize:
    """dim(z_position): the state carried after `position` tokens (PAPER.md §5)."""
    _layers.check_positive("position", position, minimum=0)
    position = int(position)
    if isinstance(config, TransformerConfig):
        per_layer = 2 * config.kv_heads * config.head_dim * position
    elif isinstance(config, MambaConfig):
        per_layer = config.d_inner * config.d_state + (config.d_conv - 1) * config.d_inner
    elif isinstance(config, Mamba2Config):
        per_layer = (
            config.n_heads * config.head_dim * config.d_state
            + (config.d_conv - 1) * config.conv_dim
        )
    else:
        raise TypeError(
            "config must be a TransformerConfig, MambaConfig or Mamba2Config, got "
            f"{type(config).__name__}"
        )
    return StateSize(per_layer, per_layer * config.n_layers)
