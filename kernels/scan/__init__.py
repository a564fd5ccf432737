"""SSM scans: Mamba-1 `selective_scan` and Mamba-2 `ssd` (chunked state-space duality)."""

from kernels.scan.api import selective_scan, ssd

__all__ = ["selective_scan", "ssd"]
