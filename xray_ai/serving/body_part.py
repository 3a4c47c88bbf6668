"""Which body part does an image show? A model's auxiliary body-part head (source document
002, the MURA multi-task paper: a body-part head beside the abnormality head).

`train --body-part-weight W` trains a softmax head over the MURA body parts next to the
main task, on the pooled features the classifier's own head reads (multi-task learning:
the part is auxiliary supervision, and anatomical context for the reader). The saved model
keeps its one-sigmoid-output form, so the head is saved beside it as `<model>.bodypart.npz`
(serving.artifacts.body_part_path; kernel, bias, class names, the model's sha256) and
applied at inference to the pooled features the analysis already computes on either
backend: one small matrix product. A file fitted for another model file is ignored.
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BodyPartHead", "save", "load"]


@dataclass(frozen=True)
class BodyPartHead:
    """softmax(pooled @ kernel + bias) over `classes`.

    Attributes:
        classes: body-part names ('elbow', 'wrist', ...), one per column of `kernel`.
        kernel: float32 (K, C) on the model's pooled features (N, K).
        bias: float32 (C,).
        model_sha256: the sha256 of the model file whose features it reads.
    """

    classes: tuple[str, ...]
    kernel: np.ndarray
    bias: np.ndarray
    model_sha256: str

    def probabilities(self, pooled: np.ndarray) -> np.ndarray:
        """(N, C) softmax probabilities for pooled features (N, K)."""
        z = np.asarray(pooled, np.float64) @ self.kernel + self.bias
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, pooled: np.ndarray) -> list[tuple[str, float]]:
        """(most probable part, its probability) for each row of pooled features."""
        p = self.probabilities(pooled)
        best = p.argmax(axis=1)
        return [(self.classes[k], float(p[i, k])) for i, k in enumerate(best)]


def save(head: BodyPartHead, path: str | Path) -> Path:
    """Write the head (float32 arrays, its classes and model sha256) to `path`; returns it."""
    path = Path(path)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, classes=np.array(head.classes, dtype=str), kernel=head.kernel.astype(np.float32),
                            bias=head.bias.astype(np.float32), model_sha256=np.array(head.model_sha256))
    return path


def load(path: str | Path, model_sha256: str | None) -> tuple[BodyPartHead | None, str | None]:
    """(head, None), or (None, why there is none) when the file is missing, unreadable or
    belongs to another model file."""
    path = Path(path)
    if not path.is_file():
        return None, "the model has no body-part head"
    try:
        with np.load(path, allow_pickle=False) as z:
            head = BodyPartHead(tuple(str(c) for c in z["classes"]), z["kernel"].astype(np.float64),
                                z["bias"].astype(np.float64), str(z["model_sha256"]))
    except (OSError, ValueError, KeyError) as exc:
        return None, f"{path.name} could not be read ({type(exc).__name__}: {exc})"
    if head.kernel.shape != (head.kernel.shape[0], len(head.classes)) or head.bias.shape != (len(head.classes),):
        return None, f"{path.name}: kernel {head.kernel.shape} and bias {head.bias.shape} do not fit {len(head.classes)} classes"
    if model_sha256 is None or head.model_sha256 != model_sha256:
        return None, f"{path.name} was fitted for another model file"
    return head, None
