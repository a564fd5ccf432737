"""The training configuration and the optimiser it describes (AdamW, warmup + cosine, clipping)."""

from __future__ import annotations

import dataclasses
import functools

import optax


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are the paper's (PAPER.md §6) except `steps`.

    Attributes:
      steps: optimiser steps in the whole run (the cosine decays to `final_lr_ratio` there).
      batch_size: sequences per step, global (split over the data-parallel devices).
      learning_rate: peak learning rate, reached after `warmup_steps` of linear warmup.
      warmup_steps: linear warmup from 0 (fewer than `steps`).
      final_lr_ratio: learning rate at the last step, as a fraction of the peak.
      weight_decay: AdamW decoupled weight decay.
      b1, b2, eps: Adam moments.
      grad_clip: clip the global gradient norm to this (0 disables clipping).
      seed: initialises the data stream (and the held-out set, with a different key).
      eval_every: evaluate on the held-out set every this many steps (and at the end).
      eval_size: held-out sequences.
      checkpoint_every: save every this many steps (and at the end and on interrupt).
      keep_checkpoints: how many recent checkpoints to keep.
      log_every: steps between host syncs that write the per-step log and progress bar.
    """

    steps: int = 500_000
    batch_size: int = 4
    learning_rate: float = 5e-5
    warmup_steps: int = 2000
    final_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 1000
    eval_size: int = 64
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10

    def __post_init__(self):
        positive = (
            "steps",
            "batch_size",
            "eval_every",
            "eval_size",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"TrainConfig.warmup_steps must lie in [0, steps={self.steps}), got "
                f"{self.warmup_steps}; lower the warmup for short runs"
            )
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(
                f"TrainConfig.final_lr_ratio must lie in [0, 1], got {self.final_lr_ratio}"
            )
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("TrainConfig.weight_decay and grad_clip must be >= 0")


def lr_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warmup to the peak, then cosine decay to `final_lr_ratio · peak` at `steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.steps,
        end_value=config.learning_rate * config.final_lr_ratio,
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW on the warmup + cosine schedule.

    Runs whose configs differ only outside the optimiser share one optimizer object, and so
    one compiled train step.
    """
    fields = (
        "steps",
        "learning_rate",
        "warmup_steps",
        "final_lr_ratio",
        "weight_decay",
        "b1",
        "b2",
        "eps",
        "grad_clip",
    )
    return _optimizer(TrainConfig(**{f: getattr(config, f) for f in fields}))


@functools.cache
def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        lr_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    return adamw
