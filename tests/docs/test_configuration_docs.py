"""docs/configuration.md must document every setting and every environment variable the host reads."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from karen_hooks import _config
from karen_hooks._config import Limits, PluginSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"
ENV_VAR = re.compile(r"""["']((?:KAREN|KARI)_[A-Z0-9_]+|ADVANCED_MODE)["']""")


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("model", "name"),
    [(m, f) for m in (Settings, PluginSettings, Limits) for f in m.model_fields],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_every_setting_is_documented(page: str, model: type, name: str) -> None:
    assert f"`{name}`" in page, f"{model.__name__}.{name} is not documented in docs/configuration.md"


def test_every_environment_variable_is_documented(page: str) -> None:
    read = set(ENV_VAR.findall(inspect.getsource(_config)))
    assert {"KAREN_CONFIG", "ADVANCED_MODE", "KARI_CPU_LIMIT"} <= read
    for path in sorted(Path(_config.__file__).parent.rglob("*.py")):
        read |= set(ENV_VAR.findall(path.read_text(encoding="utf-8")))
    missing = sorted(v for v in read if f"`{v}`" not in page)
    assert not missing, f"environment variables named in karen_hooks but not documented in docs/configuration.md: {missing}"


def test_documented_defaults_match_the_code(page: str) -> None:
    s = Settings()
    assert s.role_inheritance == {"admin": ["user"]}
    assert '`{admin = ["user"]}`' in page
    for name, field in Limits.model_fields.items():
        assert re.search(rf"\| `{name}` \| `{field.default}`", page), f"[limits] {name} default {field.default} not on the page"
    ps = PluginSettings()
    assert f"| `mode` | `\"fork\"` or `\"warm\"` | `\"{ps.mode}\"` |" in page
    assert f"| `warm_max_calls` | int > 0 | `{ps.warm_max_calls}` |" in page


def test_example_config_file_loads(page: str, tmp_path: Path) -> None:
    [example] = [b for b in re.findall(r"```toml\n(.*?)```", page, re.S) if "[plugins." in b]
    cfg = tmp_path / "karen.toml"
    cfg.write_text(example, encoding="utf-8")
    settings = load_settings(cfg, environ={})
    assert settings.plugin("weather").mode == "warm"
    assert settings.limits_for("weather").wall_seconds == 15


@pytest.mark.parametrize("raw", ["1", "true", "YES", " on "])
def test_documented_true_values(raw: str) -> None:
    assert _config.parse_bool(raw, "X") is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off"])
def test_documented_false_values(raw: str) -> None:
    assert _config.parse_bool(raw, "X") is False
