"""Bytes or a path -> XRay: the one internal image form (float32 H x W in [0, 1], bone bright).

SKELETON: the imaging helper replaces the body of `load_image`; the XRay and
ImageLoadError interfaces below are shared with the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["XRay", "ImageLoadError", "load_image", "MAX_FILE_BYTES", "MAX_PIXELS"]

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 8192 * 8192


class ImageLoadError(ValueError):
    """An image could not be loaded; the message names the file and the reason."""

    def __init__(self, filename: str | None, reason: str):
        self.filename = filename or "<bytes>"
        self.reason = reason
        super().__init__(f"{self.filename}: {reason}")


@dataclass(frozen=True)
class XRay:
    """A radiograph in the internal form.

    Attributes:
        pixels: float32 array H x W in [0, 1]; display-ready (bone bright).
        metadata: source format, original size, DICOM tags that matter, warnings.
        filename: the name the image came with, for messages and reports.
    """

    pixels: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    filename: str | None = None

    @property
    def warnings(self) -> list[str]:
        return list(self.metadata.get("warnings", []))


def load_image(source: bytes | str | Path, filename: str | None = None) -> XRay:
    raise NotImplementedError
