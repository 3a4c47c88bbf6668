"""The error every backbone raises when pretrained weights are asked for and cannot be had.

Its own module so that architectures and efficientnet_lite, which both raise it, import it
from here rather than from each other.
"""

__all__ = ["WeightsUnavailableError"]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be obtained here."""
