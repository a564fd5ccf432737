"""Safetensors checkpoints read lazily into NumPy, without torch: one file or a sharded index.

    weights = SafetensorsCheckpoint(folder)   # model.safetensors, or the index and its shards
    weights.shape("model.embed_tokens.weight")    # (V, D), from the header
    weights.read("model.embed_tokens.weight", (slice(0, 1024), slice(None)))   # a copy of rows

The format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data
buffer, row-major. Each file is memory-mapped, so reading a slice touches only the pages it
covers: a shard of a big model is read without reading (or holding) the rest. Values keep the
file's dtype; bfloat16 and float8 are `ml_dtypes` types (NumPy has none of its own).
"""

from __future__ import annotations

import json
import os
import pathlib
import struct

import ml_dtypes
import numpy as np

__all__ = ["INDEX_FILE", "SINGLE_FILE", "SafetensorsCheckpoint", "SafetensorsFile"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_MAX_HEADER = 100 * 2**20  # the format's own limit on the JSON header (100 MB)


class SafetensorsFile:
    """One .safetensors file: its header parsed and checked, its data memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise ValueError(f"no safetensors file at {self.path}")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{self.path} is not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise ValueError(
                    f"{self.path} is not a safetensors file (header length {n} does not fit "
                    f"its {size} bytes)"
                )
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(
                    f"{self.path}: the safetensors header is not JSON ({err})"
                ) from err
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: the safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._start = 8 + n
        data_size = size - self._start
        self._entries = {}
        for name, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except KeyError as err:
                raise ValueError(
                    f"{self.path}: tensor {name} has dtype {entry.get('dtype')!r} or lacks "
                    f"{err}; supported dtypes: {sorted(_DTYPES)}"
                ) from None
            if end - begin != int(np.prod(shape)) * dtype.itemsize or not 0 <= begin <= end:
                raise ValueError(
                    f"{self.path}: tensor {name} ({entry['dtype']} {list(shape)}) has "
                    f"{end - begin} bytes of data; the file is corrupt"
                )
            if end > data_size:
                raise ValueError(
                    f"{self.path}: tensor {name} ends at byte {end} of a {data_size}-byte data "
                    "buffer; the file is truncated (download it again)"
                )
            self._entries[name] = (dtype, shape, begin, end)
        self._mmap = None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def array(self, name: str) -> np.ndarray:
        """The whole tensor as a read-only memory-mapped array (nothing read yet)."""
        if self._mmap is None:
            self._mmap = np.memmap(self.path, np.uint8, mode="r", offset=self._start)
        dtype, shape, begin, end = self._entries[name]
        return self._mmap[begin:end].view(dtype).reshape(shape)

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        """A copy of `tensor[index]` (basic indexing: slices and ints), in the file's dtype."""
        return np.array(self.array(name)[index])


class SafetensorsCheckpoint:
    """The weights of a Hugging Face folder: `model.safetensors`, or the shards that
    `model.safetensors.index.json` lists (every listed shard must be present)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = pathlib.Path(folder)
        index, single = self.folder / INDEX_FILE, self.folder / SINGLE_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{index} is not a safetensors index (weight_map): {err}") from err
            missing = sorted({f for f in weight_map.values() if not (self.folder / f).is_file()})
            if missing:
                raise ValueError(
                    f"{index} lists shard {missing[0]}, which is missing from {self.folder}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                    + "; download every shard of the checkpoint"
                )
            files = {f: SafetensorsFile(self.folder / f) for f in sorted(set(weight_map.values()))}
            self._where = {}
            for name, f in weight_map.items():
                if name not in files[f]:
                    raise ValueError(
                        f"{index} places tensor {name} in {f}, but {self.folder / f} does not "
                        "hold it; the index and the shards are from different checkpoints"
                    )
                self._where[name] = files[f]
        elif single.is_file():
            file = SafetensorsFile(single)
            self._where = dict.fromkeys(file.names, file)
        else:
            others = sorted(p.name for p in self.folder.glob("*.safetensors"))
            bins = sorted(p.name for p in self.folder.glob("*.bin"))
            hint = (
                f"; it has {others[:3]} but neither {SINGLE_FILE} nor {INDEX_FILE}"
                if others
                else f"; {bins[0]} is a PyTorch pickle, which is not read (save the model "
                "with safe_serialization=True)"
                if bins
                else ""
            )
            raise ValueError(f"{self.folder} holds no {SINGLE_FILE} or {INDEX_FILE}{hint}")

    def __contains__(self, name: str) -> bool:
        return name in self._where

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def file_of(self, name: str) -> pathlib.Path:
        return self._where[name].path

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self._where[name].dtype(name)

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        return self._where[name].read(name, index)
