"""Input preprocessing from the course notes: mean subtraction, standardization to unit
variance, and PCA whitening (rotate onto the covariance's eigenbasis, divide by
sqrt(eigenvalue + eps)). Statistics come from the training split only and travel with the
checkpoint, so evaluation and resumed runs transform data identically."""

from __future__ import annotations

import numpy as np

from .dataset import DataError

KINDS = ("none", "center", "standardize", "whiten")


class Preprocessor:
    """Fit on training features, then ``transform`` any split. ``state()`` is a dict of arrays
    for the checkpoint; ``Preprocessor.from_state`` rebuilds it."""

    def __init__(self, kind: str = "standardize", eps: float = 1e-5) -> None:
        if kind not in KINDS:
            raise DataError(f"data.preprocess: unknown {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind, self.eps = kind, eps
        self.mean: np.ndarray | None = None
        self.matrix: np.ndarray | None = None  # per-feature scale, or the whitening matrix

    def fit(self, x: np.ndarray) -> "Preprocessor":
        if self.kind == "none":
            return self
        x64 = x.astype(np.float64)  # statistics in float64: float32 sums drift on large sets
        self.mean = x64.mean(axis=0)
        if self.kind == "standardize":
            std = x64.std(axis=0)
            # A constant feature (an always-blank pixel) keeps scale 1 instead of dividing by 0.
            self.matrix = 1.0 / np.where(std > self.eps, std, 1.0)
        elif self.kind == "whiten":
            xc = x64 - self.mean
            eigval, eigvec = np.linalg.eigh(xc.T @ xc / len(xc))
            self.matrix = eigvec / np.sqrt(np.maximum(eigval, 0.0) + self.eps)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return x
        if self.mean is None:
            raise RuntimeError("Preprocessor.transform before fit")
        xc = x.astype(np.float64) - self.mean
        if self.kind == "standardize":
            xc *= self.matrix
        elif self.kind == "whiten":
            xc = xc @ self.matrix
        return xc.astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        out = {"kind": np.array(self.kind), "eps": np.array(self.eps)}
        if self.mean is not None:
            out["mean"], out["matrix"] = self.mean, self.matrix if self.matrix is not None else np.zeros(0)
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "Preprocessor":
        pre = cls(str(state["kind"]), float(state["eps"]))
        if "mean" in state:
            pre.mean = np.asarray(state["mean"], dtype=np.float64)
            matrix = np.asarray(state["matrix"], dtype=np.float64)
            pre.matrix = matrix if matrix.size else None
        return pre
