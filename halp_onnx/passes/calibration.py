"""Calibration data for Taylor importance: batches of (inputs, labels) from an npz or an image folder."""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from ..errors import HalpError
from .load import LoadedModel

STAGE = "compile"


def calibration_batches(loaded: LoadedModel, calib: str | os.PathLike | dict | np.ndarray, *,
                        mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                        size: int | tuple[int, int] | None = None, samples: int = 2000, batch_size: int = 32, seed: int = 0
                        ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """(inputs, labels) batches from a calibration source:

    * an ``.npz`` whose keys are the model's input names (preprocessed arrays, batch first) and
      optionally ``labels``; or an ``.npz`` with ``images`` (uint8 N x H x W x C) and optional ``labels``;
    * a folder of images (class subfolders give labels), preprocessed with ``mean``/``std``/``size``.
    """
    from ..data import load_data, to_nchw

    names = [i.name for i in loaded.model.graph.input if i.name not in {t.name for t in loaded.model.graph.initializer}]
    labels = None
    arrays: dict[str, np.ndarray] | None = None
    if isinstance(calib, dict):
        arrays = {k: np.asarray(v) for k, v in calib.items() if k != "labels"}
        labels = calib.get("labels")
    elif isinstance(calib, np.ndarray):
        arrays = {names[0]: calib}
    else:
        path = os.fspath(calib)
        if path.endswith(".npz") and os.path.isfile(path):
            with np.load(path, allow_pickle=False) as z:
                if all(n in z.files for n in names):
                    arrays = {n: z[n] for n in names}
                    labels = z["labels"] if "labels" in z.files else None
        if arrays is None:
            data = load_data(path, size=size)
            n = len(data)
            take = np.random.default_rng(seed).permutation(n)[: min(samples, n)]
            imgs = data.take(take) if hasattr(data, "take") else np.asarray(data.images)[take]
            arrays = {names[0]: to_nchw(imgs, mean, std)}
            labels = data.labels[take] if data.labels is not None else None
            samples = len(take)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise HalpError(f"--calib: no array for model input(s) {missing} (keys: {sorted(arrays)})", stage=STAGE)
    n = min(len(next(iter(arrays.values()))), samples)
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) < n:
            raise HalpError(f"--calib: {len(labels)} labels for {n} inputs", stage=STAGE)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield ({k: np.ascontiguousarray(v[start:stop]).astype(np.float32) if v.dtype.kind == "f" else v[start:stop]
                for k, v in arrays.items()}, None if labels is None else labels[start:stop])
