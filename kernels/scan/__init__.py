"""SSM scans: Mamba-1 `selective_scan` and Mamba-2 `ssd` (chunked state-space duality), with
their Pallas block configurations `SelectiveBlocks` and `SSDBlocks`."""

from kernels.scan.api import SelectiveBlocks, SSDBlocks, selective_scan, ssd

__all__ = ["SSDBlocks", "SelectiveBlocks", "selective_scan", "ssd"]
