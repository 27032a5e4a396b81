import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "scaffold"))
from venvtools import plugin_venv  # noqa: E402,F401  (a fixture: a throw-away venv)
