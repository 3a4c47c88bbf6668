"""`python -m xray_ai ...` and the `xray-ai` console script."""

from xray_ai.cli.main import main

__all__ = ["main"]
