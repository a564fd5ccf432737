"""The training loop: steps, per-step JSONL logs, periodic evaluation, checkpoints, resume.

`fit` is what `l2m train` and `l2m sweep` run. It is resumable: the state (params, optimiser
state, step, data RNG) is checkpointed with orbax, the data of step s is a function of that
state only, so a resumed run reproduces the uninterrupted one. SIGINT / SIGTERM finish the
current step, save a checkpoint and return with `interrupted=True`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from l2m_jax import distributed
from l2m_jax.train import checkpoint as ckpt
from l2m_jax.train.optim import TrainConfig, lr_schedule, make_optimizer
from l2m_jax.train.step import (
    GaussianTask,
    Task,
    TrainState,
    batch_sharding,
    data_mesh,
    eval_set,
    evaluate,
    host_batch,
    init_state,
    put_replicated,
    train_step,
)


class FitResult(NamedTuple):
    state: TrainState
    history: list[dict]  # per-step records of this call: step, loss, kl/nll, grad_norm, lr
    evals: list[dict]  # evaluations of this call: step + `evaluate` output
    interrupted: bool
    steps_per_s: float  # training throughput of this call (after the first, compiling step)


class _StopFlag:
    """Set by SIGINT/SIGTERM; a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        local = self.signum is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(local))))


def _append_jsonl(path: pathlib.Path | None, records: list[dict]) -> None:
    if path is None or not records or jax.process_index() != 0:
        return
    with path.open("a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def _eval_record(step: int, metrics: dict) -> dict:
    return {"step": step, **{k: np.asarray(v).tolist() for k, v in metrics.items()}}


def fit(
    task: Task,
    params: Any,
    config: TrainConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
    out_dir: str | pathlib.Path | None = None,
    run_config: dict | None = None,
    resume: bool = False,
    callback: Callable[[int, TrainState], None] | None = None,
    progress: bool = True,
    description: str = "train",
) -> FitResult:
    """Trains `params` on `task` for `config.steps` steps (data-parallel over `mesh`).

    With `out_dir`, the run is checkpointed and logged there; `run_config` (JSON-able, e.g.
    {"model": ..., "data": ...}; the train config is added) identifies it, and `resume=True`
    continues the run saved there. `callback(step, state)` is called after every step
    (after that step's evaluation and checkpoint).

    Multi-process (`jax.distributed`, started here if the environment asks for it): every
    process calls `fit` with the same params and config; the mesh spans all their devices,
    a `TokenTask` feeds each process's own rows, and process 0 writes the run directory.
    """
    distributed.initialize()  # under jax.distributed when the environment asks for it
    mesh = data_mesh() if mesh is None else mesh
    n_dev = mesh.size
    if config.batch_size % n_dev:
        raise ValueError(
            f"batch size {config.batch_size} must be a multiple of the {n_dev} data-parallel "
            "devices; change --batch"
        )
    if config.eval_size % config.batch_size:
        raise ValueError(
            f"eval size {config.eval_size} must be a multiple of the batch size "
            f"{config.batch_size} (it is evaluated in batches)"
        )
    n_proc = jax.process_count()
    if not isinstance(task, GaussianTask) and len(task.eval_data) * n_proc != config.eval_size:
        raise ValueError(
            f"the task's held-out set has {len(task.eval_data)} sequences on each of {n_proc} "
            f"process(es) but config.eval_size is {config.eval_size}"
        )
    optimizer = make_optimizer(config)
    schedule = lr_schedule(config)
    # A private copy: the step donates its state, the caller's `params` stay valid.
    # (device_put alone may reuse the caller's buffer for the shard on its own device.)
    params = jax.tree.map(lambda a: jnp.array(a, copy=True), params)
    state = put_replicated(init_state(params, optimizer, config.seed), mesh)

    out = None if out_dir is None else pathlib.Path(out_dir)
    manager = None
    if out is not None:
        full_config = {**(run_config or {}), "train": dataclasses.asdict(config)}
        ckpt.prepare_run_dir(out, full_config, resume)
        manager = ckpt.checkpoint_manager(out, config.keep_checkpoints)
        if resume:
            state = ckpt.restore_state(manager, state)
            ckpt.truncate_logs(out, int(state.step))
    elif resume:
        raise ValueError("resume=True needs out_dir (the run directory to continue)")
    log_path = None if out is None else out / ckpt.LOG_FILE
    eval_path = None if out is None else out / ckpt.EVAL_FILE

    sharding = batch_sharding(mesh)
    constants = put_replicated(task.constants, mesh)
    held_out = eval_set(task, mesh, config.eval_size, config.seed)
    start = int(jax.device_get(state.step))
    history: list[dict] = []
    evals: list[dict] = []
    pending: list[tuple[int, dict]] = []
    tokens_per_step = config.batch_size * task.tokens_per_sequence
    timer = {"t0": None, "steps": 0}

    def flush(bar):
        if not pending:
            return
        rows = []
        for step, metrics in jax.device_get(pending):
            row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            row["lr"] = float(schedule(step - 1))
            rows.append(row)
        pending.clear()
        history.extend(rows)
        _append_jsonl(log_path, rows)
        if bar is not None:
            post = {task.loss_name: f"{rows[-1]['loss']:.4g}"}
            if timer["t0"] is not None and timer["steps"]:
                rate = timer["steps"] / (time.perf_counter() - timer["t0"])
                post["tok/s"] = f"{rate * tokens_per_step:.3g}"
            bar.set_postfix(post, refresh=False)

    def run_eval(step):
        record = _eval_record(
            step, evaluate(state.params, task, held_out, config.batch_size, constants)
        )
        evals.append(record)
        _append_jsonl(eval_path, [record])

    interrupted = False
    single_process = jax.process_count() == 1
    bar = tqdm.tqdm(
        total=config.steps,
        initial=start,
        desc=description,
        unit="step",
        disable=not progress or jax.process_index() != 0,
        dynamic_ncols=True,
    )
    try:
        with _StopFlag() as stop:
            for step in range(start + 1, config.steps + 1):
                batch = None
                if not isinstance(task, GaussianTask):
                    local = np.asarray(task.batches(step - 1, config.batch_size), np.int32)
                    if local.shape[0] * n_proc != config.batch_size:
                        raise ValueError(
                            f"task.batches returned {local.shape[0]} rows; each of the {n_proc} "
                            f"process(es) must return its own {config.batch_size // n_proc}"
                        )
                    batch = host_batch(mesh, local)
                state, metrics = train_step(
                    state,
                    batch,
                    constants,
                    task=task,
                    optimizer=optimizer,
                    batch_size=config.batch_size,
                    sharding=sharding,
                )
                pending.append((step, metrics))
                if step == start + 1:  # the first step compiles: time from its end
                    jax.block_until_ready(metrics)
                    timer["t0"] = time.perf_counter()
                else:
                    timer["steps"] += 1
                bar.update(1)
                last = step == config.steps
                do_eval = last or step % config.eval_every == 0
                do_save = manager is not None and (last or step % config.checkpoint_every == 0)
                flushing = do_eval or do_save or step % config.log_every == 0
                if flushing:
                    flush(bar)
                if (flushing or single_process) and stop.agreed():
                    interrupted = not last
                if do_eval or (interrupted and not evals):  # an interrupted run reports too
                    run_eval(step)
                if do_save or (interrupted and manager is not None):
                    ckpt.save_state(manager, state)
                if callback is not None:
                    callback(step, state)
                if interrupted:
                    break
            flush(bar)
            if start >= config.steps:  # resumed a finished run: report its final metrics
                evals.append(
                    _eval_record(
                        start, evaluate(state.params, task, held_out, config.batch_size, constants)
                    )
                )
    finally:
        bar.close()
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    elapsed = None if timer["t0"] is None else time.perf_counter() - timer["t0"]
    rate = timer["steps"] / elapsed if elapsed and timer["steps"] else float("nan")
    return FitResult(state, history, evals, interrupted, rate)
