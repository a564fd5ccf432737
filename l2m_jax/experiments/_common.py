"""Small helpers every experiment shares: argument parsing, JSON results, plotting."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np


def int_range(text: str) -> list[int]:
    """Parses "1-6", "1..4096" (powers of two when written with ..), "2,4,8" or "5".

    "a-b" is every integer from a to b; "a..b" is a, 2a, 4a, ... up to b (the log-spaced
    grids the scaling fits use); a comma list is taken as given.
    """
    text = text.strip()
    try:
        if ".." in text:
            lo, hi = (int(t) for t in text.split(".."))
            if lo < 1 or hi < lo:
                raise ValueError
            out = []
            v = lo
            while v <= hi:
                out.append(v)
                v *= 2
            return out
        if "-" in text[1:]:
            lo, hi = (int(t) for t in text.split("-", 1))
            if hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(
            f"could not read {text!r} as integers; write 'a-b' (every integer), "
            "'a..b' (a, 2a, 4a, ... up to b) or 'a,b,c'"
        ) from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "_asdict"):
        return _plain(obj._asdict())
    if isinstance(obj, (np.ndarray, np.generic)) or type(obj).__module__.startswith("jax"):
        return _plain(np.asarray(obj).tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_json(
    path: str | pathlib.Path, obj: Any, *, provenance: dict | None = None
) -> pathlib.Path:
    """Writes `obj` (dicts, lists, NamedTuples, numpy/JAX arrays) as indented JSON.

    A dict gets `process_count` and `device_count` beside its figures: `provenance`, by
    default `l2m_jax.distributed.provenance()`, and then in a multi-process run only process
    0 writes (every process computed the same figures). A caller that passes `provenance`
    (a command that does not start JAX itself) decides which process writes.
    """
    from l2m_jax import distributed

    path = pathlib.Path(path)
    if isinstance(obj, dict) or hasattr(obj, "_asdict"):
        obj = {**_plain(obj), **(distributed.provenance() if provenance is None else provenance)}
    if provenance is None and not distributed.is_primary():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(obj), indent=2) + "\n")
    return path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | pathlib.Path) -> pathlib.Path:
    """Saves `fig` as PNG (process 0 only in a multi-process run) and closes it."""
    from l2m_jax import distributed

    path = pathlib.Path(path)
    if distributed.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Prints rows under headers with aligned columns (floats with 4 significant digits)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else "-"  # e.g. no steps were timed
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def read_token_file(path: str, *, per_process: bool = False) -> list[np.ndarray]:
    """Documents from a token file: .npy [T] (one document) or [n_docs, T], or an .npz whose
    arrays (1-D, in archive order) are the documents.

    With `per_process`, only this process's documents are read (`shard_for_host`: every
    n-th from its index; rows of a .npy through a memory map, members of an .npz one by one).
    """
    from l2m_jax import distributed

    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"--tokens: no file at {p}")
    share = distributed.shard_for_host if per_process else list
    try:
        data = np.load(p, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(f"--tokens: {p} is not a .npy/.npz token file ({err})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return [data[k] for k in share(data.files)]
    if data.ndim == 1:
        return [np.array(d) for d in share([data])]
    if data.ndim != 2:
        raise ValueError(f"--tokens: {p} must hold [T] or [n_docs, T] ids, got {data.shape}")
    return [np.array(data[i]) for i in share(range(data.shape[0]))]
