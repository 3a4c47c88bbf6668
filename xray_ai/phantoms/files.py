"""The names of the files a phantom dataset keeps beside each image (no heavy imports: the
dataset readers and predict-batch's folder walk use them to skip what is not an image)."""

from __future__ import annotations

__all__ = ["MASK_SUFFIX", "OUTLINE_SUFFIXES", "MEASUREMENTS_CSV", "is_side_file", "outline_path"]

MASK_SUFFIX = "_mask.png"  # the finding's lesion mask; all zero for a normal image
OUTLINES = ("heart", "thorax")  # a chest's anatomy outlines, for the cardiothoracic ratio
OUTLINE_SUFFIXES = tuple(f"_{name}.png" for name in OUTLINES)
MEASUREMENTS_CSV = "measurements.csv"  # at the dataset root: each chest image's true CTR


def is_side_file(name: str) -> bool:
    """Whether a file name is a mask or outline beside an image, not an image itself."""
    low = name.lower()
    return low.endswith(MASK_SUFFIX) or low.endswith(OUTLINE_SUFFIXES)


def outline_path(image_path, name: str):
    """The `<stem>_<name>.png` outline beside an image (a pathlib.Path)."""
    from pathlib import Path

    image_path = Path(image_path)
    return image_path.with_name(f"{image_path.stem}_{name}.png")
