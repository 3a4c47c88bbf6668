"""`python -m xray_ai`: see xray_ai.cli."""

import sys

from .cli import main

sys.exit(main())
