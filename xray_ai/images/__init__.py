"""Images in: bytes or a path -> XRay (float32 gray H x W in [0, 1], display-ready) or ImageLoadError."""

from xray_ai.images.common import ImageLoadError, ImageLoadWarning, XRay
from xray_ai.images.load import load_image

__all__ = ["load_image", "XRay", "ImageLoadError", "ImageLoadWarning"]
