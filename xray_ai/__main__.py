"""`python -m xray_ai`: see xray_ai.cli."""

import sys

from xray_ai.cli import main

sys.exit(main())
