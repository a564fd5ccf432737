"""Run directories: the configs as JSON, orbax checkpoints of the train state, JSONL logs.

Layout of a run directory::

  config.json    {"model": ..., "data": ..., "train": ...} — what the run is
  checkpoints/   orbax CheckpointManager steps (TrainState: params, opt_state, step, rng)
  log.jsonl      one line per step (loss, kl / nll, grad_norm, lr)
  eval.jsonl     one line per evaluation (position-wise and average metrics)

A resume checks everything before it writes anything: the directory, the config (must match
exactly), and that the latest checkpoint restores. Only then are log lines after the restored
step dropped (they are recomputed identically).

In a multi-process run (`jax.distributed`) process 0 makes the decisions and writes the
JSON files; all processes checkpoint together through orbax.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from l2m_jax import distributed
from l2m_jax.train.step import TrainState

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "log.jsonl"
EVAL_FILE = "eval.jsonl"


def _normalised(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(saved) | set(wanted)):
            out += _differences(saved.get(key), wanted.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == wanted else [f"{prefix[:-1]}: saved {saved!r}, now {wanted!r}"]


def read_run_config(out_dir: str | pathlib.Path) -> dict:
    """The config.json of a run directory; ValueError if missing or unreadable."""
    path = pathlib.Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing: {out_dir} is not a run directory")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is corrupt ({err}); start a new run with another --out") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is corrupt (not a JSON object)")
    return config


def prepare_run_dir(out_dir: str | pathlib.Path, run_config: dict, resume: bool) -> None:
    """Checks (and for a new run, creates) `out_dir` before any training or writing.

    New run: `out_dir` must hold no run yet (nothing is overwritten). Resume: `out_dir` must
    hold a run with the same config and at least one checkpoint. In a multi-process run
    process 0 decides and writes; every process raises the same error if the check fails.
    """
    distributed.on_primary(lambda: _prepare_run_dir(pathlib.Path(out_dir), run_config, resume))


def _prepare_run_dir(out: pathlib.Path, run_config: dict, resume: bool) -> None:
    wanted = _normalised(run_config)
    ckpt = out / CHECKPOINT_DIR
    if not resume:
        if (out / CONFIG_FILE).exists() or ckpt.exists():
            raise ValueError(
                f"{out} already holds a run; pass --resume to continue it, or choose a new --out"
            )
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(wanted, indent=2) + "\n")
        return
    if not out.is_dir():
        raise ValueError(f"nothing to resume: {out} does not exist (drop --resume to start)")
    saved = read_run_config(out)
    diffs = _differences(saved, wanted)
    if diffs:
        raise ValueError(
            f"cannot resume {out} with a different config ({'; '.join(diffs)}); "
            "use the original settings or a new --out"
        )
    if not ckpt.is_dir():
        raise ValueError(f"nothing to resume: {ckpt} is missing")


def checkpoint_manager(out_dir: str | pathlib.Path, keep: int) -> ocp.CheckpointManager:
    """Synchronous saves: a step reported saved is on disk (safe with donated state).

    Every process creates one and calls save / restore on it; orbax lets process 0 (its
    primary host) write the metadata and the replicated arrays, and keeps the processes in
    step with barriers. `out_dir` must be storage every process sees (one machine, NFS, a
    mounted bucket).
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    path = (pathlib.Path(out_dir) / CHECKPOINT_DIR).absolute()
    return ocp.CheckpointManager(path, options=options)


def save_state(manager: ocp.CheckpointManager, state: TrainState) -> None:
    step = int(jax.device_get(state.step))
    if manager.latest_step() != step:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()


def restore_state(manager: ocp.CheckpointManager, template: TrainState) -> TrainState:
    """Restores the latest checkpoint into the structure, shapes and shardings of `template`."""
    step = manager.latest_step()
    where = manager.directory
    if step is None:
        raise ValueError(f"nothing to resume: no complete checkpoint in {where}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax raises many kinds; all mean the same to the user
        raise ValueError(
            f"checkpoint {step} in {where} is corrupt or from another model ({type(err).__name__}:"
            f" {str(err)[:300]}); remove it to fall back to an older one, or start a new --out"
        ) from None
    state = TrainState(*state) if not isinstance(state, TrainState) else state
    if int(jax.device_get(state.step)) != step:
        raise ValueError(f"checkpoint {step} in {where} is corrupt: it holds step {state.step}")
    return state


def _parse(line: str) -> dict | None:
    """A log line, or None for a blank or half-written one (a run killed mid-write)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def truncate_logs(out_dir: str | pathlib.Path, step: int) -> None:
    """Drops log lines after `step` (a resumed run recomputes them): no step twice in a log."""
    if jax.process_index() != 0:
        return
    for name in (LOG_FILE, EVAL_FILE):
        path = pathlib.Path(out_dir) / name
        if not path.exists():
            continue
        kept = [
            line
            for line in path.read_text().splitlines()
            if (record := _parse(line)) is not None and record["step"] <= step
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [r for line in path.read_text().splitlines() if (r := _parse(line)) is not None]
