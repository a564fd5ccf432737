"""Training: AdamW + warmup/cosine, exact-KL and NLL losses, data-parallel jitted steps,
position-wise evaluation, orbax checkpoints with exact resume.

  config = TrainConfig(steps=2000, batch_size=4, learning_rate=1e-2, warmup_steps=200)
  task = GaussianTask(family, functools.partial(models.apply, model_config))
  result = fit(task, models.init(model_config, key), config, out_dir="runs/x")
  result.evals[-1]["avg_kl"], result.evals[-1]["kl_by_position"]
"""

from l2m_jax.train.checkpoint import read_jsonl, read_run_config
from l2m_jax.train.loop import FitResult, fit
from l2m_jax.train.losses import gaussian_entropy, gaussian_kl, gaussian_nll, token_nll
from l2m_jax.train.optim import TrainConfig, lr_schedule, make_optimizer
from l2m_jax.train.step import (
    GaussianTask,
    TokenTask,
    TrainState,
    data_mesh,
    evaluate,
    init_state,
    train_step,
)

__all__ = [
    "FitResult",
    "GaussianTask",
    "TokenTask",
    "TrainConfig",
    "TrainState",
    "data_mesh",
    "evaluate",
    "fit",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_nll",
    "init_state",
    "lr_schedule",
    "make_optimizer",
    "read_jsonl",
    "read_run_config",
    "token_nll",
    "train_step",
]
