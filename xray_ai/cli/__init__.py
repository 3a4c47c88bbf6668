"""`python -m xray_ai ...` and the `xray-ai` console script: one module per command group.

`entry` holds the parser, the command table and `main`; `predict`, `registry`, `models` and
`misc` one command group each; `common` the exit codes and the bad-input error they share.
"""

from xray_ai.cli.entry import main

__all__ = ["main"]
