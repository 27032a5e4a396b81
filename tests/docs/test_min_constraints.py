"""constraints/min.txt (``tox -e min``) pins exactly the floors pyproject.toml declares."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors: dict[str, str] = {}
    for raw in project["dependencies"]:
        req = Requirement(raw)
        lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        assert lows, f"runtime dependency {raw!r} declares no lower bound; tox -e min cannot test it"
        floors[canonicalize_name(req.name)] = lows[0]
    return floors


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints" / "min.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            [spec] = list(req.specifier)
            assert spec.operator == "==", f"constraints/min.txt must pin exactly: {line!r}"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_every_runtime_floor_is_pinned_in_min_constraints() -> None:
    floors, pins = _floors(), _pins()
    wrong = {name: (low, pins.get(name)) for name, low in floors.items() if name not in pins or Version(pins[name]) != Version(low)}
    assert not wrong, (
        f"constraints/min.txt is out of step with pyproject.toml (name: (declared floor, pinned)): {wrong}; "
        "pin each runtime dependency at exactly its declared floor"
    )
