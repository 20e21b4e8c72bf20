"""Run folders: what a fit leaves on disk, and checkpoints to resume from.

A run folder holds ``labels.npy``, ``summary.json`` (method, n_clusters, time_s,
and nmi/ari/acc when labels are known), ``idata.nc`` for the Bayesian methods,
and ``checkpoint.pt`` while a long run is under way (a sampler's kept label and
log-likelihood draws beside it, in append-only ``.npz`` files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .results import ClusteringResult


def _write_atomically(path: Path, write) -> Path:
    """``write(binary file)`` into a temporary file beside ``path``, then renamed onto
    it: a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
    return path


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
        _write_atomically(folder / self.SUMMARY, lambda f: f.write(
            (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()))
        if result.idata is not None:
            result.idata.to_netcdf(str(folder / self.IDATA))
        return folder

    def load_summary(self) -> dict:
        return json.loads((self.path / self.SUMMARY).read_text())

    def load_labels(self) -> np.ndarray:
        return np.load(self.path / self.LABELS)

    # -- checkpoints ---------------------------------------------------------------
    # ``name`` lets several estimators keep their checkpoints in one folder
    def checkpoint_path(self, name: str | None = None) -> Path:
        return self.path / (name or self.CHECKPOINT)

    def save_checkpoint(self, state: dict, name: str | None = None) -> Path:
        """Atomically write a checkpoint (any torch-serialisable dict)."""
        import torch

        self._ensure()
        return _write_atomically(self.checkpoint_path(name), lambda f: torch.save(state, f))

    def save_arrays(self, name: str, **arrays: np.ndarray) -> Path:
        """Atomically write numpy arrays (``.npz``) beside the checkpoint."""
        self._ensure()
        return _write_atomically(self.path / name, lambda f: np.savez(f, **arrays))

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path / name) as f:
            return {key: f[key] for key in f.files}

    def load_checkpoint(self, name: str | None = None) -> dict | None:
        """The last checkpoint, or None if there is none."""
        import torch

        path = self.checkpoint_path(name)
        if not path.exists():
            return None
        return torch.load(path, weights_only=False)

    def clear_checkpoint(self, name: str | None = None):
        path = self.checkpoint_path(name)
        if path.exists():
            path.unlink()
