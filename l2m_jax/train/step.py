"""Training state, tasks (what data, which loss), the jitted train step and evaluation.

A task is a small static description: the model's apply function plus where the data comes
from. `GaussianTask` draws fresh sequences from a Gaussian family inside the step and trains on
the exact per-token KL against the family's exact conditionals; `TokenTask` trains on token NLL
for batches fed from the host. The step is data-parallel: a 1-D mesh over the devices, the
batch sharded along it, parameters and optimizer state replicated.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from l2m_jax.train.losses import gaussian_kl, gaussian_nll, token_nll

DATA_AXIS = "data"


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimiser steps taken
    rng: jax.Array  # uint32[2] raw key for the data stream (checkpointable as a plain array)


def init_state(params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


# ----------------------------------------------------------------------------- devices


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """`tree` on every device of `mesh`. In a multi-process run every process passes the same
    values (the same seed made them) and each places its own copy: `jax.device_put` would
    first compare them across processes, one collective per array."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


def host_batch(mesh: Mesh, local_rows: np.ndarray) -> jax.Array:
    """The global batch made of every process's `local_rows`, sharded over the mesh.

    Each process passes only its own rows (the same number on each); the global batch is
    process 0's rows, then process 1's, ... (`make_array_from_process_local_data`), so no
    process reads or sends another's data. With one process, `local_rows` is the batch.
    """
    n_proc = jax.process_count()
    rows = local_rows.shape[0]
    global_shape = (rows * n_proc, *local_rows.shape[1:])
    if global_shape[0] % mesh.size:
        raise ValueError(
            f"{n_proc} process(es) × {rows} rows cannot be split over the {mesh.size} "
            "devices of the mesh"
        )
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh), np.ascontiguousarray(local_rows), global_shape
    )


# ----------------------------------------------------------------------------- tasks


def _mean_std(prediction: Any) -> tuple[jax.Array, jax.Array]:
    if hasattr(prediction, "mean") and hasattr(prediction, "std"):
        return prediction.mean, prediction.std
    mean, std = prediction
    return mean, std


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianTask:
    """Fresh Gaussian sequences each step; loss = exact per-token KL (mean over i and channels).

    Attributes:
      family: a Gaussian family (`l2m_jax.sources.subvolume_gaussian(...)` or alike) with
        `length`, `channels`, `sample(key, batch, bos=True)` and `conditionals(z)`.
      apply_fn: `(params, inputs_BxLxC) -> prediction` with `.mean` and `.std` [B, L, C]
        (or a `(mean, std)` pair); the inputs are the sequence shifted right behind an
        all-zero BOS vector, so output i predicts z_i from z_<i.
    """

    family: Any
    apply_fn: Callable[[Any, jax.Array], Any]

    @property
    def seq_len(self) -> int:
        return int(self.family.length)

    def sample(self, key: jax.Array, batch: int) -> jax.Array:
        return self.family.sample(key, batch, bos=True)

    @property
    def constants(self) -> Any:
        """The exact linear predictor: passed into the jitted steps as an argument (at large L
        it is big, and must not be baked into the compiled program)."""
        return self.family.predictor

    def per_token(
        self, params: Any, x_BxL1xC: jax.Array, constants: Any = None
    ) -> dict[str, jax.Array]:
        from l2m_jax.sources.gaussian import conditionals

        inputs_BxLxC, targets_BxLxC = x_BxL1xC[:, :-1], x_BxL1xC[:, 1:]
        mean_q, std_q = _mean_std(self.apply_fn(params, inputs_BxLxC))
        predictor = self.constants if constants is None else constants
        mean_p, std_p = jax.lax.stop_gradient(conditionals(predictor, targets_BxLxC))
        return {
            "kl": gaussian_kl(mean_p, std_p, mean_q, std_q).mean(-1),
            "nll": gaussian_nll(targets_BxLxC, mean_q, std_q).mean(-1),
        }

    loss_name: ClassVar[str] = "kl"

    @property
    def tokens_per_sequence(self) -> int:
        return self.seq_len


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class TokenTask:
    """Token sequences fed from the host; loss = NLL (mean over positions).

    Attributes:
      logprob_fn: `(params, inputs_BxL, targets_BxL int32) -> log q(targets) [B, L]`, e.g.
        `functools.partial(models.token_logprobs, config)`: the fused token head, which never
        builds the [B, L, V] logits (memory O(L) in the loss and its gradient).
      apply_fn: `(params, tokens_BxL int32) -> logits_BxLxV`: the loss takes the log-softmax of
        the full logits (a [B, L, V] array and its gradient; the reference path, and the way in
        for models that only give logits). Give exactly one of logprob_fn and apply_fn.
      batches: `batches(step, batch_size) -> np.ndarray int32 [B / P, L+1]`: this
        process's rows of the global batch of `batch_size` (all of it when P = 1 process), a
        deterministic function of the step (so a resumed run sees the same data); column 0
        is BOS. The global batch is process 0's rows, then process 1's, ...
      seq_len: L, the predicted positions per sequence.
      eval_data: this process's held-out sequences `np.ndarray int32 [N / P, L+1]`.
    """

    logprob_fn: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None
    apply_fn: Callable[[Any, jax.Array], jax.Array] | None = None
    batches: Callable[[int, int], np.ndarray]
    seq_len: int
    eval_data: np.ndarray

    constants = None

    def __post_init__(self):
        if (self.logprob_fn is None) == (self.apply_fn is None):
            raise ValueError(
                "TokenTask needs exactly one of logprob_fn (the fused head, e.g. "
                "functools.partial(models.token_logprobs, config)) and apply_fn (full logits)"
            )

    def per_token(
        self, params: Any, tokens_BxL1: jax.Array, constants: Any = None
    ) -> dict[str, jax.Array]:
        del constants
        inputs_BxL, targets_BxL = tokens_BxL1[:, :-1], tokens_BxL1[:, 1:]
        if self.logprob_fn is not None:
            return {"nll": -self.logprob_fn(params, inputs_BxL, targets_BxL)}
        return {"nll": token_nll(self.apply_fn(params, inputs_BxL), targets_BxL)}

    loss_name: ClassVar[str] = "nll"

    @property
    def tokens_per_sequence(self) -> int:
        return self.seq_len


Task = GaussianTask | TokenTask


# ----------------------------------------------------------------------------- steps


@functools.partial(
    jax.jit,
    static_argnames=("task", "optimizer", "batch_size", "sharding"),
    donate_argnames=("state",),
)
def train_step(
    state: TrainState,
    batch: jax.Array | None,
    constants: Any = None,
    *,
    task: Task,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    sharding: NamedSharding,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step. `batch` is None for Gaussian tasks (fresh samples drawn here);
    `constants` is `task.constants` (the data's exact conditionals, or None)."""
    rng, key = jax.random.split(jax.random.wrap_key_data(state.rng))
    if batch is None:
        batch = task.sample(key, batch_size)
    batch = jax.lax.with_sharding_constraint(batch, sharding)

    def loss_fn(params):
        per_token = task.per_token(params, batch, constants)
        means = {name: value.mean() for name, value in per_token.items()}
        return means[task.loss_name], means

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
    new_state = TrainState(params, opt_state, state.step + 1, jax.random.key_data(rng))
    return new_state, metrics


@functools.partial(jax.jit, static_argnames=("task",))
def _eval_sums(params: Any, batch: jax.Array, constants: Any, *, task: Task) -> dict:
    per_token = task.per_token(params, batch, constants)
    return {name: value.sum(0) for name, value in per_token.items()}


def eval_set(task: Task, mesh: Mesh, size: int, seed: int) -> jax.Array:
    """The fixed held-out set: Gaussian samples from a key apart from the training stream."""
    if isinstance(task, TokenTask):
        return host_batch(mesh, np.asarray(task.eval_data, np.int32))
    key = jax.random.fold_in(jax.random.key(seed), 0x5EED)  # never drawn by the train stream
    return _sample(key, task=task, size=size, sharding=batch_sharding(mesh))


@functools.partial(jax.jit, static_argnames=("task", "size", "sharding"))
def _sample(key: jax.Array, *, task: GaussianTask, size: int, sharding: NamedSharding):
    return jax.lax.with_sharding_constraint(task.sample(key, size), sharding)


def evaluate(
    params: Any, task: Task, data: jax.Array, chunk: int, constants: Any = None
) -> dict[str, Any]:
    """Position-wise and average metrics on held-out `data`, `chunk` sequences per call.

    `constants` defaults to `task.constants` (pass a device copy to avoid transfers).

    Returns numpy/float values: `kl_by_position`, `avg_kl` (Gaussian tasks only),
    `nll_by_position`, `avg_nll`.
    """
    n = data.shape[0]
    if n % chunk:
        raise ValueError(f"held-out set of {n} sequences is not a multiple of the chunk {chunk}")
    totals: dict[str, jax.Array] = {}
    constants = task.constants if constants is None else constants
    for start in range(0, n, chunk):
        sums = _eval_sums(params, data[start : start + chunk], constants, task=task)
        totals = sums if not totals else jax.tree.map(jnp.add, totals, sums)
    out: dict[str, Any] = {}
    for name, total in jax.device_get(totals).items():
        by_position = np.asarray(total, np.float64) / n
        out[f"{name}_by_position"] = by_position
        out[f"avg_{name}"] = float(by_position.mean())
    return out
