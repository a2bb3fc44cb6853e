"""Image data for fine-tuning (numpy + Pillow, no torch).

:func:`load_data` reads

* an image folder with one subfolder per class (``DATA/cat/1.jpg``, ``DATA/dog/x.png``): labeled,
  classes in sorted folder order (as torchvision's ``ImageFolder``), images found recursively;
* a flat folder of images: unlabeled (label-free distillation);
* an ``.npz`` with ``images`` (uint8 ``N x H x W x C``), optional ``labels`` (integers, ``N``) and
  optional ``classes`` (strings).

Folders are read lazily (a file list, decoded per batch, or all at once with
:meth:`ImageData.materialize`). Every image comes out as uint8 ``H x W x C`` RGB of one common size:
``size`` when given (images of another size are resized, PIL bilinear), else the images must all
have the same size. Every problem is a :class:`~halp_onnx.errors.HalpError` naming the path or key.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import HalpError

STAGE = "data"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".gif")


@dataclass(frozen=True, eq=False)
class ImageData:
    """Images (uint8 ``N x H x W x C`` array, or a tuple of file paths read lazily), labels (int64
    ``N``) or None, class names or None, where they came from, and ``shape`` = ``(H, W, C)`` of
    every image :meth:`take` returns."""

    images: np.ndarray | tuple[str, ...]
    labels: np.ndarray | None
    classes: tuple[str, ...] | None
    source: str
    shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    @property
    def lazy(self) -> bool:
        return not isinstance(self.images, np.ndarray)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded uint8 images."""
        h, w, c = self.shape
        return len(self) * h * w * c

    def take(self, indices: Sequence[int] | np.ndarray, workers: int = 0) -> np.ndarray:
        """uint8 ``len(indices) x H x W x C`` (files are decoded here, with ``workers`` threads)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        files = self.images
        if isinstance(files, np.ndarray):  # not lazy
            return files[idx]
        out = np.empty((len(idx), *self.shape), dtype=np.uint8)

        def read(j: int) -> None:
            out[j] = _read_image(files[idx[j]], self.shape)

        if workers > 0 and len(idx) > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(read, range(len(idx))))
        else:
            for j in range(len(idx)):
                read(j)
        return out

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageData":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        src = self.images
        images = src[idx] if isinstance(src, np.ndarray) else tuple(src[i] for i in idx)
        labels = self.labels[idx] if self.labels is not None else None
        return ImageData(images, labels, self.classes, self.source, self.shape)

    def materialize(self, workers: int = 0) -> "ImageData":
        """All images decoded into one array (a no-op for array data)."""
        if not self.lazy:
            return self
        return ImageData(self.take(np.arange(len(self)), workers), self.labels, self.classes,
                         self.source, self.shape)


# ------------------------------------------------------------------------------------------------
# parsing helpers


def parse_floats(text: str | Sequence[float], option: str = "--mean", n: int | None = None) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` -> ``(0.485, 0.456, 0.406)``; a bad value names ``option``."""
    if not isinstance(text, str):
        values = tuple(float(v) for v in text)
    else:
        parts = [p.strip() for p in text.split(",")]
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise HalpError(f"{option} {text!r}: expected comma-separated numbers such as 0.485,0.456,0.406",
                            stage=STAGE) from None
    if not values or not all(np.isfinite(values)):
        raise HalpError(f"{option} {text!r}: expected finite comma-separated numbers", stage=STAGE)
    if n is not None and len(values) not in (1, n):
        raise HalpError(f"{option} {text!r}: expected 1 or {n} values, got {len(values)}", stage=STAGE)
    return values


def parse_size(text: str | int | Sequence[int] | None, option: str = "--size") -> tuple[int, int] | None:
    """``224`` / ``"224"`` / ``"224x192"`` (height x width) / ``(224, 192)`` -> ``(H, W)``."""
    if text is None:
        return None
    if isinstance(text, (int, np.integer)):
        hw: tuple = (int(text), int(text))
    elif isinstance(text, str):
        parts = text.lower().replace(",", "x").split("x")
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise HalpError(f"{option} {text!r}: expected a size such as 224 or 224x192 (height x width)",
                            stage=STAGE) from None
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2:
            raise HalpError(f"{option} {text!r}: expected a size such as 224 or 224x192", stage=STAGE)
        hw = tuple(vals)
    else:
        hw = tuple(int(v) for v in text)
        if len(hw) != 2:
            raise HalpError(f"{option} {text!r}: expected (height, width)", stage=STAGE)
    if min(hw) < 1:
        raise HalpError(f"{option} {text!r}: sizes must be positive", stage=STAGE)
    return hw


def to_nchw(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 ``N x H x W x C`` -> float32 ``N x C x H x W``: ``(x / 255 - mean) / std``."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise HalpError(f"expected N x H x W x C images, got shape {x.shape}", stage=STAGE)
    c = x.shape[-1]
    m = np.asarray(mean, dtype=np.float32).reshape(-1)
    s = np.asarray(std, dtype=np.float32).reshape(-1)
    for name, v in (("mean", m), ("std", s)):
        if len(v) not in (1, c):
            raise HalpError(f"{name} has {len(v)} values but the images have {c} channels", stage=STAGE)
    if np.any(s == 0):
        raise HalpError("std must not contain 0", stage=STAGE)
    y = (x.astype(np.float32) * np.float32(1 / 255.0) - m) / s
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


# ------------------------------------------------------------------------------------------------
# loading


def _resize(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if arr.shape[:2] == tuple(hw):
        return arr
    if arr.shape[2] == 1:
        img = Image.fromarray(arr[:, :, 0]).resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
        return np.asarray(img)[:, :, None]
    return np.asarray(Image.fromarray(arr).resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


def _read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if rgb.size != (shape[1], shape[0]):
                rgb = rgb.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise HalpError(f"{path}: cannot read the image ({exc})", stage=STAGE) from None


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if _is_image(Path(f))]
    return found


def _load_folder(path: Path, size: tuple[int, int] | None) -> ImageData:
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    top_images = [p for p in entries if p.is_file() and _is_image(p)]
    subdirs = [p for p in entries if p.is_dir()]
    labels = classes = None
    if top_images:
        with_images = [d for d in subdirs if _images_under(d)]
        if with_images:
            raise HalpError(f"{path}: has both images at the top level ({top_images[0].name}, ...) and class "
                            f"subfolders ({with_images[0].name}/, ...); use one layout: a flat folder of images "
                            "(unlabeled) or one subfolder per class (labeled)", stage=STAGE)
        files = top_images
    elif subdirs:
        files = []
        label_list: list[int] = []
        classes_list: list[str] = []
        for d in subdirs:
            imgs = _images_under(d)
            if not imgs:
                continue  # folders without images are not classes (as in torchvision's ImageFolder)
            label_list += [len(classes_list)] * len(imgs)
            classes_list.append(d.name)
            files += imgs
        if not files:
            raise HalpError(f"{path}: no images in its subfolders (extensions {', '.join(IMAGE_EXTENSIONS)})",
                            stage=STAGE)
        labels = np.asarray(label_list, dtype=np.int64)
        classes = tuple(classes_list)
    else:
        raise HalpError(f"{path}: no images (extensions {', '.join(IMAGE_EXTENSIONS)}) and no class subfolders",
                        stage=STAGE)

    if size is None:
        from PIL import Image

        first = None
        for f in files:
            try:
                with Image.open(f) as img:
                    wh = img.size
            except (OSError, ValueError, SyntaxError) as exc:
                raise HalpError(f"{f}: cannot read the image ({exc})", stage=STAGE) from None
            if first is None:
                first = (f, wh)
            elif wh != first[1]:
                raise HalpError(f"{path}: images differ in size ({first[0].name} is {first[1][0]}x{first[1][1]}, "
                                f"{f.name} is {wh[0]}x{wh[1]} (width x height)); pass --size to resize them",
                                stage=STAGE)
        assert first is not None
        size = (first[1][1], first[1][0])
    return ImageData(tuple(str(f) for f in files), labels, classes, str(path), (size[0], size[1], 3))


def _load_npz(path: Path, size: tuple[int, int] | None) -> ImageData:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise HalpError(f"{path}: cannot read the .npz ({type(exc).__name__}: {exc})", stage=STAGE) from None
    with z:
        keys = list(z.files)
        if "images" not in keys:
            raise HalpError(f"{path}: no 'images' array (keys: {', '.join(keys) or 'none'}); expected 'images' "
                            "(uint8 N x H x W x C) and optional 'labels'", stage=STAGE)
        try:
            images = z["images"]
            labels = z["labels"] if "labels" in keys else None
            classes = z["classes"] if "classes" in keys else None
        except ValueError as exc:  # object arrays need pickle
            raise HalpError(f"{path}: cannot read an array ({exc})", stage=STAGE) from None
    if images.dtype != np.uint8:
        raise HalpError(f"{path}: 'images' has dtype {images.dtype}; expected uint8 pixels 0..255", stage=STAGE)
    if images.ndim == 3:  # N x H x W grayscale
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or 0 in images.shape:
        raise HalpError(f"{path}: 'images' has shape {images.shape}; expected N x H x W x C with C = 1, 3 or 4",
                        stage=STAGE)
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise HalpError(f"{path}: 'labels' has shape {labels.shape} and dtype {labels.dtype}; expected a 1-D "
                            "integer array", stage=STAGE)
        if len(labels) != len(images):
            raise HalpError(f"{path}: {len(images)} images but {len(labels)} labels", stage=STAGE)
        if labels.min() < 0:
            raise HalpError(f"{path}: 'labels' has negative values (min {labels.min()})", stage=STAGE)
        labels = labels.astype(np.int64)
    if classes is not None:
        classes = tuple(str(c) for c in classes.reshape(-1))
        if labels is not None and len(labels) and labels.max() >= len(classes):
            raise HalpError(f"{path}: label {labels.max()} but only {len(classes)} classes", stage=STAGE)
    if size is not None and images.shape[1:3] != tuple(size):
        images = np.stack([_resize(im, size) for im in images])
    images = np.ascontiguousarray(images)
    return ImageData(images, labels, classes, str(path), tuple(images.shape[1:]))


def load_data(path: str | os.PathLike, *, size: int | str | Sequence[int] | None = None) -> ImageData:
    """Load an image folder or an ``.npz`` (see the module docstring); ``size`` = ``(H, W)``, an
    int, or ``"HxW"``: resize every image to it."""
    p = Path(path)
    hw = parse_size(size)
    if not p.exists():
        raise HalpError(f"{p}: no such file or folder", stage=STAGE)
    if p.is_dir():
        return _load_folder(p, hw)
    if p.suffix.lower() == ".npz":
        return _load_npz(p, hw)
    raise HalpError(f"{p}: expected an image folder or an .npz file", stage=STAGE)


def split(data: ImageData, holdout: float, seed: int = 0) -> tuple[ImageData, ImageData | None]:
    """``(train, held_out)``: a random ``holdout`` share set aside (per class when labeled, at least
    one image of every class with two or more); ``holdout == 0`` gives ``(data, None)``."""
    if not 0.0 <= holdout < 1.0:
        raise HalpError(f"--holdout {holdout}: expected a share in [0, 1)", stage=STAGE)
    n = len(data)
    if holdout == 0.0 or n < 2:
        return data, None
    rng = np.random.default_rng(seed)
    if data.labels is not None:
        held = []
        for c in np.unique(data.labels):
            idx = np.flatnonzero(data.labels == c)
            k = int(round(holdout * len(idx)))
            if len(idx) >= 2:
                k = min(max(k, 1), len(idx) - 1)
            else:
                k = 0
            held.append(rng.permutation(idx)[:k])
        held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    else:
        k = min(max(int(round(holdout * n)), 1), n - 1)
        held_idx = np.sort(rng.permutation(n)[:k])
    if len(held_idx) == 0:
        return data, None
    mask = np.ones(n, bool)
    mask[held_idx] = False
    return data.subset(np.flatnonzero(mask)), data.subset(held_idx)
