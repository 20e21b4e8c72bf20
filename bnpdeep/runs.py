"""Run folders: what a fit leaves on disk, and checkpoints to resume from.

A run folder holds ``labels.npy``, ``summary.json`` (method, n_clusters, time_s,
and nmi/ari/acc when labels are known), ``idata.nc`` for the Bayesian methods,
and ``checkpoint.pt`` while a long run is under way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .results import ClusteringResult


class RunFolder:
    """A folder for one run; created on first write."""

    LABELS, SUMMARY, IDATA, CHECKPOINT = "labels.npy", "summary.json", "idata.nc", "checkpoint.pt"

    def __init__(self, path):
        self.path = Path(path)

    def _ensure(self) -> Path:
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def save(self, result: ClusteringResult, extra: dict | None = None) -> Path:
        """Write labels, summary (merged with ``extra``) and, if present, idata."""
        folder = self._ensure()
        np.save(folder / self.LABELS, np.asarray(result.labels, dtype=np.int64))
        summary = result.summary()
        if extra:
            summary.update(extra)
        tmp = folder / (self.SUMMARY + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, folder / self.SUMMARY)
        if result.idata is not None:
            result.idata.to_netcdf(str(folder / self.IDATA))
        return folder

    def load_summary(self) -> dict:
        return json.loads((self.path / self.SUMMARY).read_text())

    def load_labels(self) -> np.ndarray:
        return np.load(self.path / self.LABELS)

    # -- checkpoints ---------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    def save_checkpoint(self, state: dict) -> Path:
        """Atomically write a checkpoint (any torch-serialisable dict)."""
        import torch

        folder = self._ensure()
        tmp = folder / (self.CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, folder / self.CHECKPOINT)
        return folder / self.CHECKPOINT

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint, or None if there is none."""
        import torch

        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, weights_only=False)

    def clear_checkpoint(self):
        if self.checkpoint_path.exists():
            self.checkpoint_path.unlink()
