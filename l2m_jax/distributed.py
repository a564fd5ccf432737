"""Multi-process runs: one process per host under `jax.distributed`, and what they share.

A pod (or a SLURM / MPI job, or several processes on one machine) runs the same program in
every process. `initialize()` starts `jax.distributed` when the environment describes such a
job; nothing here launches processes. Then:

  shard_for_host(items)    this process's share of a list (every n-th item from its index)
  gather_arrays(local)     every process's array, in process order (any dtype, exact)
  sum_arrays(local)        the sum of equal-shape arrays over processes (integers exact)
  on_primary(fn)           runs fn on process 0 only; its result (or ValueError) on all
  agreed_errors()          a block that fails on every process when it fails on any
  provenance()             {"process_count", "device_count"} for result files

With one process every function is the plain single-process operation (no communication).
Collectives must be called by every process in the same order: call these from code that
every process runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "HEARTBEAT_TIMEOUT_S",
    "agreed_errors",
    "gather_arrays",
    "initialize",
    "is_primary",
    "job_from_environment",
    "on_primary",
    "provenance",
    "shard_for_host",
    "sum_arrays",
]

# A process that stops sending heartbeats this long is declared dead and the others stop
# (JAX's default is 100 s).
HEARTBEAT_TIMEOUT_S = 30
_GATHER_BYTES = 64 << 20  # per process and call: bounds the device buffers of a gather


# ----------------------------------------------------------------------------- start-up


def job_from_environment() -> tuple[int, int, str] | None:
    """(process_count, process_index, what says so) when the environment describes a job of
    several processes, else None. Reads the environment (on a Cloud TPU VM also its metadata
    server); JAX is not initialised.

    JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES / JAX_PROCESS_ID, or a cluster that
    `jax.distributed.initialize()` detects by itself (SLURM, Open MPI, Cloud TPU pod workers,
    ...) with more than one process.
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        count, index = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
        if count is not None and index is not None:
            try:
                return int(count), int(index), "JAX_COORDINATOR_ADDRESS"
            except ValueError:
                raise ValueError(
                    f"JAX_NUM_PROCESSES={count!r} and JAX_PROCESS_ID={index!r} must be integers"
                ) from None
    cluster = _detected_cluster()
    if cluster is not None:
        count, index = int(cluster.get_process_count()), int(cluster.get_process_id())
        if count > 1:
            return count, index, cluster.__name__
    if env.get("JAX_COORDINATOR_ADDRESS"):
        raise ValueError(
            "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES and JAX_PROCESS_ID are not "
            "(and no cluster was detected): set all three on every process"
        )
    return None


def _detected_cluster():
    """The cluster environment `jax.distributed.initialize()` would detect, or None."""
    from jax._src import clusters  # JAX's own detection, so we start exactly when it would

    with warnings.catch_warnings():  # e.g. "Kubernetes detected, but not the package"
        warnings.simplefilter("ignore")
        for env in clusters.ClusterEnv._cluster_types:
            if not env.opt_in_only_method and env.is_env_present():
                return env
    return None


def initialize(*, heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_S) -> bool:
    """Starts `jax.distributed` when the environment describes a multi-process job.

    Explicit jobs set JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID on every process; SLURM, Open MPI and TPU pod workers need nothing (JAX
    detects them). Returns whether this is a multi-process run. Safe to call again; the CLI
    calls it before every command, and `fit`, `count_pairs`, `bipartite_mi` and
    `load_corpus(per_host=True)` call it too, so it must come before any other JAX work.

    When it starts `jax.distributed`, an uncaught exception ends the process at once (after
    its traceback) instead of waiting in JAX's shutdown for processes that wait for it; the
    others stop at their next collective, or when this one's heartbeat is missed
    (`heartbeat_timeout_seconds`).
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    job = job_from_environment()
    if job is None:
        return False
    count, index, source = job
    explicit = source == "JAX_COORDINATOR_ADDRESS"
    try:
        jax.distributed.initialize(
            os.environ["JAX_COORDINATOR_ADDRESS"] if explicit else None,
            num_processes=count if explicit else None,
            process_id=index if explicit else None,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )
    except RuntimeError as err:
        if "before" not in str(err):
            raise
        raise RuntimeError(
            f"the environment ({source}) describes a job of {count} processes, but JAX was "
            "used before jax.distributed could start; call l2m_jax.distributed.initialize() "
            "first thing in the program"
        ) from err
    _exit_on_uncaught_exception()
    return True


def _exit_on_uncaught_exception() -> None:
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    sys.excepthook = hook


# ----------------------------------------------------------------------------- who does what


def is_primary() -> bool:
    """Whether this is process 0, the one that writes run directories and result files."""
    import jax

    return jax.process_index() == 0


def shard_for_host(
    items: Sequence, *, process_index: int | None = None, process_count: int | None = None
) -> list:
    """This process's share of `items`: every process_count-th item from process_index.

    Defaults come from `jax.process_index()` / `jax.process_count()`; one process gets all.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count={process_count}), got {process_index}"
        )
    return list(items[process_index::process_count])


def provenance() -> dict[str, int]:
    """What ran: {"process_count": ..., "device_count": ...} (all processes' devices)."""
    import jax

    return {"process_count": jax.process_count(), "device_count": jax.device_count()}


# ----------------------------------------------------------------------------- collectives


def _allgather(local: np.ndarray) -> np.ndarray:
    """[process_count, *local.shape] of equal-shape arrays (dtypes JAX keeps as they are)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local))


def gather_arrays(local: np.ndarray) -> list[np.ndarray]:
    """Every process's `local` array, in process order (the same list on every process).

    The arrays may differ in their first dimension; the rest of the shape and the dtype must
    agree. Bytes are moved as they are, so any dtype (uint64 keys, float64 sums) arrives
    exactly, with or without jax_enable_x64. They travel in blocks of a few fixed sizes
    (powers of two), so a run compiles only a handful of gathers.
    """
    import jax

    local = np.ascontiguousarray(local)
    if jax.process_count() == 1:
        return [local]
    if local.ndim == 0:
        local = local[None]
    trailing = local.shape[1:]
    signature = np.frombuffer(f"{local.dtype.str}{trailing}".encode()[:64].ljust(64), np.uint8)
    sizes_2 = np.array([local.shape[0], local.nbytes], np.int64).view(np.uint8)  # x64 or not
    headers = _allgather(np.concatenate([sizes_2, signature]))
    if len({h[16:].tobytes() for h in headers}) != 1:
        kinds = {bytes(h[16:]).decode().strip() for h in headers}
        raise ValueError(
            f"gather_arrays: processes passed arrays of different dtypes or trailing shapes "
            f"({sorted(kinds)}); only the first dimension may differ"
        )
    rows, sizes = zip(
        *(np.ascontiguousarray(h[:16]).view(np.int64).tolist() for h in headers), strict=True
    )
    longest = max(sizes)
    block = min(_GATHER_BYTES, max(4096, 1 << max(longest - 1, 0).bit_length()))
    flat = local.reshape(-1).view(np.uint8)
    pieces: list[list[np.ndarray]] = [[] for _ in sizes]
    for start in range(0, longest, block):  # the same calls on every process
        part = np.zeros(block, np.uint8)
        mine = flat[start : start + block]
        part[: mine.size] = mine
        for p, got in enumerate(_allgather(part)):
            if sizes[p] > start:
                pieces[p].append(got[: min(block, sizes[p] - start)])
    out = []
    for p, n in enumerate(rows):
        data = np.concatenate(pieces[p]) if pieces[p] else np.zeros(0, np.uint8)
        out.append(data.view(local.dtype).reshape(n, *trailing))
    return out


def sum_arrays(local) -> np.ndarray:
    """The elementwise sum of every process's equal-shape array (exact for integers)."""
    local = np.asarray(local)
    parts = gather_arrays(local.reshape(1, *local.shape))
    if len({p.shape for p in parts}) != 1:
        raise ValueError(f"sum_arrays: shapes differ across processes: {[p.shape for p in parts]}")
    return np.sum(np.concatenate(parts), axis=0, dtype=local.dtype).reshape(local.shape)


def _text_from_primary(text: str | None) -> str:
    """Process 0's `text` on every process (the others pass anything)."""
    import jax

    data = np.frombuffer((text or "").encode(), np.uint8)
    parts = gather_arrays(data if jax.process_index() == 0 else data[:0])
    return bytes(parts[0]).decode()


def on_primary(fn: Callable[[], Any]) -> Any:
    """Runs `fn()` on process 0 only and returns its result on every process.

    The result must be JSON-able. A ValueError raised by `fn` is raised on every process
    with the same message, so all stop together (run-directory checks, for example).
    """
    import jax

    if jax.process_count() == 1:
        return fn()
    reply = None
    if jax.process_index() == 0:
        try:
            reply = json.dumps({"result": fn()})
        except ValueError as err:
            reply = json.dumps({"error": str(err)})
    answer = json.loads(_text_from_primary(reply))
    if "error" in answer:
        raise ValueError(answer["error"])
    return answer["result"]


@contextlib.contextmanager
def agreed_errors() -> Iterator[None]:
    """Runs the block on every process; if it raises ValueError on any, all of them raise.

    The process that failed re-raises its own error; the others raise a ValueError with the
    first failing process's message. The block must not use collectives itself.
    """
    import jax

    if jax.process_count() == 1:
        yield
        return
    error: ValueError | None = None
    try:
        yield
    except ValueError as err:
        error = err
    flag = b"" if error is None else b"!" + str(error).encode()  # "!": failed, maybe no text
    gathered = gather_arrays(np.frombuffer(flag, np.uint8))
    failed = [(p, bytes(m[1:]).decode()) for p, m in enumerate(gathered) if m.size]
    if error is not None:
        raise error
    if failed:
        process, text = failed[0]
        raise ValueError(f"process {process} of {jax.process_count()}: {text}")
