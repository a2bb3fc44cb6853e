"""Channel labels: which logical channel each position of a tensor's channel span carries.

Every tracked tensor carries a :class:`Labels`: a set of axes (usually just the channel axis) and an
integer *atom* id per position of those axes. Atoms that must be removed together are merged in a
:class:`UnionFind`; after the analysis, each union-find class is one prunable channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Labels:
    """Atom ids of a tensor along ``axes`` (sorted); ``ids.shape`` equals the tensor's dims on those axes."""

    axes: tuple[int, ...]
    ids: np.ndarray

    def __post_init__(self) -> None:
        if len(self.axes) != self.ids.ndim:
            raise ValueError(f"labels over axes {self.axes} need {len(self.axes)}-d ids, got {self.ids.ndim}-d")

    @property
    def flat(self) -> np.ndarray:
        return self.ids.reshape(-1)


class UnionFind:
    """Union-find over atom ids that grows on demand, with per-atom metadata arrays."""

    def __init__(self) -> None:
        self._parent = np.zeros(0, dtype=np.int64)
        self.source = np.zeros(0, dtype=np.int64)  # which source (producer dim) created the atom
        self.constant = np.zeros(0, dtype=bool)  # padding atom (a constant, not a computed channel)

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, n: int, source: int, constant: bool = False) -> np.ndarray:
        start = len(self._parent)
        ids = np.arange(start, start + n, dtype=np.int64)
        self._parent = np.concatenate([self._parent, ids])
        self.source = np.concatenate([self.source, np.full(n, source, dtype=np.int64)])
        self.constant = np.concatenate([self.constant, np.full(n, constant, dtype=bool)])
        return ids

    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return int(root)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge atoms a[i] with b[i] elementwise."""
        a = np.asarray(a).reshape(-1)
        b = np.asarray(b).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f"cannot unify {a.shape} atoms with {b.shape}")
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                # keep the smaller id as root: the class is named by its first atom
                if rx < ry:
                    self._parent[ry] = rx
                else:
                    self._parent[rx] = ry

    def classes(self, ids: np.ndarray) -> np.ndarray:
        """The current class (root atom) of each atom of ``ids``, any shape; nothing is compressed."""
        ids = np.asarray(ids, dtype=np.int64)
        if not ids.size:
            return ids
        uniq, inverse = np.unique(ids, return_inverse=True)
        root = uniq
        while True:
            up = self._parent[root]
            if np.array_equal(up, root):
                return root[inverse].reshape(ids.shape)
            root = up

    def roots(self) -> np.ndarray:
        """The class (root atom) of every atom, vectorised full compression."""
        parent = self._parent.copy()
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand
