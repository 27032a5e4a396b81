"""Tests of the scaffold and of migrate share one throw-away virtualenv (see venvtools.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from venvtools import plugin_venv  # noqa: E402,F401  (a fixture)
