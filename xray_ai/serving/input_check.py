"""Is an image like the ones a model was trained on? A distance in the model's own feature space.

A classifier answers every input, and on an image unlike its training data (another body
part, a real radiograph for a model trained on phantoms, a blank frame) its probability
means nothing, however confident: the CompactCNN pneumonia model that shipped until
2026-11-23 gave a real chest radiograph p = 1.000 and a knee phantom p = 0.997. So each model may carry the
distribution of its pooled features (the global average of the Grad-CAM feature map) on
its training images: their mean and a Ledoit-Wolf shrunk precision matrix. An image's
distance is the Mahalanobis distance to that mean, divided by sqrt(K) so that it reads
the same for any feature width K; the threshold is a high percentile (default 99.5) of
the distances of held-out in-distribution images, so about 0.5% of such images are
flagged by design. The check warns; it never changes the probability.

Measured with that pneumonia model (96 px): validation phantoms 0.61 median, 1.02 at
the 99.5th percentile; a real chest radiograph (RG1) 3.07, the RG3 tibia 2.22, a knee
phantom 1.70, a hand phantom 1.93, a uniform gray frame 5.25; a cardiomegaly phantom (the
same chest generator) 0.45. A per-feature (diagonal) distance separated these far worse
(the knee phantom fell inside), hence the full precision matrix.

The distribution lives beside the model file, `<model>.features.npz` (its path:
serving.artifacts.input_check_path), and records the sha256 of the model it was fitted on;
a file for another model is ignored. numpy and scikit-learn only.

How the precision is stored (`FactoredPrecision`, about 1.3 MB at K = 1280 instead of
6.1 MB for the full float32 matrix): with D = diag(P)^1/2, R = D^-1 P D^-1 has unit diagonal;
its eigen-directions with an eigenvalue under 1/1000 of the largest (at most 64; the few
directions the training features vary most along, which give P condition numbers up to
1.5e7) are kept exactly (float32 vectors, float64 eigenvalues), and on the rest R is
replaced by R' (R with those eigenvalues raised to the cut-off: condition <= 1000), whose
Cholesky factor is stored as int16 with a float32 step per column. Distances then differ
from the full float32 matrix's by under 1e-4 relative (measured on the shipped models:
models/README.md, "Input-check files"). Plain float16 of P was measured too coarse (up to
16% on out-of-distribution features), and dropping eigen-directions far too lossy: every
direction adds about 1 to an in-distribution image's squared distance. Files in the old
format (`precision`, the full float32 matrix) still load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FeatureDistribution", "FactoredPrecision", "fit", "load", "save", "DEFAULT_PERCENTILE"]

DEFAULT_PERCENTILE = 99.5


# The stored form of the precision (FactoredPrecision): eigen-directions of the unit-diagonal
# R below _EXACT_BELOW times its largest eigenvalue are kept exactly (at most _MAX_EXACT),
# the rest as an int16 Cholesky factor.
_EXACT_BELOW = 1e-3
_MAX_EXACT = 64
_INT16_MAX = 32767


@dataclass(frozen=True)
class FactoredPrecision:
    """A precision matrix P (K, K) in the form the input-check file stores (module docstring).

    P = D (B diag(w) B' + Q L L' Q) D with Q = I - B B', where D = diag(scale); B (K, r)
    orthonormal eigenvectors of D^-1 P D^-1 with eigenvalues w (r,); L (K, K) lower
    triangular (dequantized from int16; `factor_step` (K,) is each column's step). So
    z' P z = w . (B' u)^2 + |L' Q u|^2 with u = D z, both terms >= 0.
    """

    scale: np.ndarray
    basis: np.ndarray
    eigenvalues: np.ndarray
    factor: np.ndarray
    factor_step: np.ndarray

    @classmethod
    def of(cls, precision: np.ndarray) -> "FactoredPrecision":
        """Factor a symmetric positive definite precision matrix (K, K).

        Raises:
            ValueError: not square, or not positive definite.
        """
        p = np.asarray(precision, np.float64)
        if p.ndim != 2 or p.shape[0] != p.shape[1]:
            raise ValueError(f"precision must be square, got shape {p.shape}")
        p = (p + p.T) / 2  # the float32 files are symmetric to ~1e-6
        diag = np.diag(p)
        if np.any(~np.isfinite(p)) or np.any(diag <= 0):
            raise ValueError("precision is not positive definite (a diagonal entry <= 0, or not finite)")
        scale = np.sqrt(diag).astype(np.float32).astype(np.float64)  # stored float32: R from what is stored
        r_mat = p / np.outer(scale, scale)
        w, v = np.linalg.eigh(r_mat)  # ascending
        if w[0] <= 0:
            raise ValueError(f"precision is not positive definite (smallest eigenvalue {w[0]:.3g})")
        n_exact = min(int(np.sum(w < _EXACT_BELOW * w[-1])), _MAX_EXACT, len(w) - 1)
        floor = w[n_exact]
        basis = v[:, :n_exact].astype(np.float32).astype(np.float64)
        raised = r_mat + (v[:, :n_exact] * (floor - w[:n_exact])) @ v[:, :n_exact].T  # R': condition <= 1000
        chol = np.linalg.cholesky((raised + raised.T) / 2)
        step = (np.abs(chol).max(axis=0) / _INT16_MAX).astype(np.float32).astype(np.float64)
        step[step == 0] = 1.0  # (a column is never all zero: its diagonal entry is > 0)
        q = np.clip(np.rint(chol / step), -_INT16_MAX, _INT16_MAX)
        return cls(scale, basis, w[:n_exact].copy(), np.tril(q) * step, step)

    @property
    def width(self) -> int:
        return len(self.scale)

    def quadratic(self, z: np.ndarray) -> np.ndarray:
        """z' P z (N,) for rows z (N, K), without forming P."""
        u = z * self.scale
        a = u @ self.basis
        rest = u - a @ self.basis.T
        return (a * a) @ self.eigenvalues + np.sum(np.square(rest @ self.factor), axis=1)

    def dense(self) -> np.ndarray:
        """The precision matrix (K, K) it stands for (for inspection and tests)."""
        q = np.eye(self.width) - self.basis @ self.basis.T
        inner = (self.basis * self.eigenvalues) @ self.basis.T + q @ self.factor @ self.factor.T @ q
        return inner * np.outer(self.scale, self.scale)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays `save` writes: the factor's lower triangle (row by row) as int16 split
        into its low and high bytes (2, K(K+1)/2) uint8, which compresses ~10% better."""
        rows, cols = np.tril_indices(self.width)
        q = np.rint(self.factor[rows, cols] / self.factor_step[cols]).astype("<i2")
        return {"scale": self.scale.astype(np.float32), "basis": self.basis.astype(np.float32),
                "basis_eigenvalues": self.eigenvalues.astype(np.float64),
                "factor_step": self.factor_step.astype(np.float32),
                "factor_bytes": np.ascontiguousarray(q.view(np.uint8).reshape(-1, 2).T)}

    @classmethod
    def from_arrays(cls, data) -> "FactoredPrecision":
        """Inverse of `arrays` (an open npz or a dict).

        Raises:
            ValueError: shapes that do not fit together.
        """
        scale = np.asarray(data["scale"], np.float64)
        basis = np.asarray(data["basis"], np.float64)
        eigenvalues = np.asarray(data["basis_eigenvalues"], np.float64)
        step = np.asarray(data["factor_step"], np.float64)
        raw = np.asarray(data["factor_bytes"])
        k = len(scale)
        if (scale.ndim != 1 or basis.shape != (k, len(eigenvalues)) or step.shape != (k,)
                or raw.dtype != np.uint8 or raw.shape != (2, k * (k + 1) // 2)):
            raise ValueError(f"factored precision arrays do not fit together (scale {scale.shape}, basis "
                             f"{basis.shape}, eigenvalues {eigenvalues.shape}, step {step.shape}, factor {raw.shape})")
        q = np.ascontiguousarray(raw.T).view("<i2").ravel()
        rows, cols = np.tril_indices(k)
        factor = np.zeros((k, k))
        factor[rows, cols] = q * step[cols]
        return cls(scale, basis, eigenvalues, factor, step)


@dataclass(frozen=True)
class FeatureDistribution:
    """Pooled-feature distribution of a model's training images, and where "unlike" begins.

    mean (K,); precision: a FactoredPrecision (what `fit` makes and the files store), or a
    full (K, K) float64 matrix (files in the old format); threshold: the calibration images'
    distance at `percentile`; n_fit / n_calibration: how many images fitted and calibrated
    it; model_sha256: the `.keras` file it belongs to; source: what data, in words.
    """

    mean: np.ndarray
    precision: np.ndarray | FactoredPrecision
    threshold: float
    percentile: float
    n_fit: int
    n_calibration: int
    model_sha256: str
    source: str

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        """Scaled Mahalanobis distance (N,) of pooled features (N, K) to the training mean."""
        z = np.asarray(pooled, np.float64) - self.mean
        if isinstance(self.precision, FactoredPrecision):
            squared = self.precision.quadratic(z)
        else:  # (z P) . z row by row: a BLAS product, 14x faster than a three-operand einsum at K = 1280
            squared = np.einsum("ij,ij->i", z @ self.precision, z)
        return np.sqrt(np.maximum(squared, 0.0) / z.shape[1])


def fit(fit_features: np.ndarray, calibration_features: np.ndarray, model_sha256: str, source: str,
        percentile: float = DEFAULT_PERCENTILE) -> FeatureDistribution:
    """Fit on training images' pooled features (N, K); set the threshold on other images'.

    The mean and precision are returned as `save` stores them (float32 mean, FactoredPrecision),
    so the threshold is the percentile of the distances the saved file gives.

    Raises:
        ValueError: fewer than 2 fitting or 20 calibration images, or mismatched widths.
    """
    from sklearn.covariance import LedoitWolf

    fit_features = np.asarray(fit_features, np.float64)
    calibration_features = np.asarray(calibration_features, np.float64)
    if fit_features.ndim != 2 or len(fit_features) < 2:
        raise ValueError(f"need at least 2 fitting images' features (N, K), got shape {fit_features.shape}")
    if calibration_features.ndim != 2 or calibration_features.shape[1] != fit_features.shape[1]:
        raise ValueError(f"calibration features {calibration_features.shape} do not match {fit_features.shape}")
    if len(calibration_features) < 20:  # a 99.5th percentile of fewer is just the maximum of a handful
        raise ValueError(f"need at least 20 calibration images, got {len(calibration_features)}")
    estimate = LedoitWolf().fit(fit_features)
    unthresholded = FeatureDistribution(estimate.location_.astype(np.float32).astype(np.float64),
                                        FactoredPrecision.of(estimate.precision_), float("inf"), percentile,
                                        len(fit_features), len(calibration_features), model_sha256, source)
    threshold = float(np.percentile(unthresholded.distances(calibration_features), percentile))
    return dataclasses.replace(unthresholded, threshold=threshold)


def _meta(distribution: FeatureDistribution) -> str:
    return json.dumps({"threshold": distribution.threshold, "percentile": distribution.percentile,
                       "n_fit": distribution.n_fit, "n_calibration": distribution.n_calibration,
                       "model_sha256": distribution.model_sha256, "source": distribution.source})


def save(distribution: FeatureDistribution, path: str | Path, *, meta: str | None = None) -> Path:
    """Write the distribution to `path`: float32 mean, the precision as a FactoredPrecision
    (a full matrix is factored first), JSON metadata (`meta`: that JSON string verbatim,
    e.g. an old file's; default from the distribution's fields).

    Raises:
        ValueError: a full precision matrix that is not positive definite.
    """
    precision = distribution.precision
    if not isinstance(precision, FactoredPrecision):
        precision = FactoredPrecision.of(precision)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, mean=np.asarray(distribution.mean).astype(np.float32), **precision.arrays(),
                            meta=np.array(_meta(distribution) if meta is None else meta))
    return Path(path)


def load(path: str | Path, model_sha256: str | None) -> tuple[FeatureDistribution | None, str | None]:
    """(distribution, None), or (None, why not): missing, unreadable, or fitted on another model.

    Reads both formats: the factored precision (`save`), and the old full float32 matrix
    (`precision`)."""
    path = Path(path)
    if not path.is_file():
        return None, f"no input-check file {path.name}"
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            mean = data["mean"].astype(np.float64)
            if "precision" in data.files:  # the old format
                precision = data["precision"].astype(np.float64)
                width = precision.shape
            else:
                precision = FactoredPrecision.from_arrays(data)
                width = (precision.width, precision.width)
    except (OSError, ValueError, KeyError) as exc:
        return None, f"input-check file {path.name} unreadable ({type(exc).__name__}: {exc})"
    if meta.get("model_sha256") != model_sha256:
        return None, f"input-check file {path.name} was fitted on another model file (sha256 {meta.get('model_sha256')})"
    if width != (mean.shape[0], mean.shape[0]):
        return None, f"input-check file {path.name}: precision {width} does not fit mean {mean.shape}"
    return FeatureDistribution(mean, precision, float(meta["threshold"]), float(meta["percentile"]),
                               int(meta["n_fit"]), int(meta["n_calibration"]), meta["model_sha256"],
                               str(meta.get("source", ""))), None
