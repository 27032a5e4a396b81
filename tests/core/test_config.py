"""Operator settings: strict booleans, env overrides, config file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from karen_hooks import ConfigError, load_settings, parse_bool


@pytest.mark.parametrize("raw, value", [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                        ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_booleans(raw: str, value: bool) -> None:
    assert parse_bool(raw, "X") is value


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "tru"])
def test_anything_else_is_an_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="ADVANCED_MODE=.* is not a boolean: use one of 1/true/yes/on"):
        load_settings(environ={"ADVANCED_MODE": raw})


def test_advanced_mode_false_means_false() -> None:
    """The old system enabled UI loading for ADVANCED_MODE=false."""
    assert load_settings(environ={"ADVANCED_MODE": "false"}).advanced_mode is False
    assert load_settings(environ={"ADVANCED_MODE": "on"}).advanced_mode is True


def test_env_lists_and_limits() -> None:
    s = load_settings(environ={"KAREN_TRUSTED_PLUGINS": "a, b", "KAREN_LOAD_PLUGINS": "", "KARI_CPU_LIMIT": "3",
                               "KARI_PLUGIN_DIR": "/srv/plugins"})
    assert s.trusted_plugins == ["a", "b"] and s.load_plugins == [] and s.limits.cpu_seconds == 3
    assert s.plugin_dir == "/srv/plugins"
    assert load_settings(environ={}).load_plugins is None


def test_bad_cpu_limit() -> None:
    with pytest.raises(ConfigError, match="KARI_CPU_LIMIT='fast' must be a positive whole number"):
        load_settings(environ={"KARI_CPU_LIMIT": "fast"})


def test_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "karen.toml"
    cfg.write_text(
        'trusted_plugins = ["time-query"]\n[role_inheritance]\nadmin = ["user", "ops"]\n'
        '[plugins.weather]\nui_trusted = true\nlimits = { wall_seconds = 2 }\nenv = { KEY = "v" }\n'
    )
    s = load_settings(environ={"KAREN_CONFIG": str(cfg), "KAREN_TRUSTED_PLUGINS": "weather"})
    assert s.trusted_plugins == ["time-query", "weather"]
    assert s.is_trusted("weather") and s.plugin("weather").ui_trusted
    assert s.limits_for("weather").wall_seconds == 2 and s.limits_for("other").wall_seconds == 10
    assert s.role_inheritance == {"admin": ["user", "ops"]}


def test_config_file_errors_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "karen.toml"
    cfg.write_text("[plugins.weather]\ntrusted = \"perhaps\"\n")
    with pytest.raises(ConfigError, match="plugins.weather.trusted"):
        load_settings(environ={"KAREN_CONFIG": str(cfg)})
    cfg.write_text("[plugins.weather]\ntrustd = true\n")
    with pytest.raises(ConfigError, match="plugins.weather.trustd: Extra inputs are not permitted"):
        load_settings(environ={"KAREN_CONFIG": str(cfg)})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"KAREN_CONFIG": str(tmp_path / "missing.toml")})
    # per-plugin limits are checked when the settings load, not on the plugin's first call
    cfg.write_text("[plugins.w]\nlimits = { wall_seconds = -1 }\n")
    with pytest.raises(ConfigError, match=r"plugins\.w\.limits\.wall_seconds: Input should be greater than 0"):
        load_settings(environ={"KAREN_CONFIG": str(cfg)})
    cfg.write_text("[plugins.w]\nlimits = { wall_secs = 2 }\n")
    with pytest.raises(ConfigError, match=r"plugins\.w\.limits\.wall_secs: Extra inputs are not permitted"):
        load_settings(environ={"KAREN_CONFIG": str(cfg)})
    # a string where a list belongs was taken apart into characters once an env var added to it:
    # disable_plugins = "whoami" with KAREN_DISABLE_PLUGINS=other disabled w, h, o, ... and not whoami
    for key, var in (("disable_plugins", "KAREN_DISABLE_PLUGINS"), ("trusted_plugins", "KAREN_TRUSTED_PLUGINS")):
        for value in ('"whoami"', "5", '[["a"]]'):
            cfg.write_text(f"{key} = {value}\n")
            with pytest.raises(ConfigError, match=f"{key} in the config file must be a list of plugin names"):
                load_settings(environ={"KAREN_CONFIG": str(cfg), var: "other"})
    cfg.write_text("limits = 5\n")
    with pytest.raises(ConfigError, match="limits in the config file must be a table"):
        load_settings(environ={"KAREN_CONFIG": str(cfg), "KARI_CPU_LIMIT": "3"})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(environ={"KAREN_CONFIG": str(tmp_path)})  # a directory
    cfg.write_bytes(b"default_tenant = '\xff'\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_settings(environ={"KAREN_CONFIG": str(cfg)})
    # values no kernel, selector or timestamp can hold loaded fine, then failed every call with OverflowError
    for line, problem in (("wall_seconds = inf", "finite number"), ("wall_seconds = 1e300", "less than or equal to 86400"),
                          ("memory_mb = 100000000000000", "less than or equal to 1048576")):
        cfg.write_text(f"[plugins.w]\nlimits = {{ {line} }}\n")
        with pytest.raises(ConfigError, match=rf"plugins\.w\.limits\.{line.split()[0]}: .*{problem}"):
            load_settings(environ={"KAREN_CONFIG": str(cfg)})


def test_plugin_limits_override_only_what_they_name() -> None:
    s = load_settings(environ={"KARI_CPU_LIMIT": "9"}, plugins={"w": {"limits": {"wall_seconds": "2.5", "processes": 4}}})
    got = s.limits_for("w")
    assert (got.wall_seconds, got.processes, got.cpu_seconds) == (2.5, 4, 9)  # cpu: the host's, not Limits' default
    assert s.limits_for("other") == s.limits and s.limits.processes == 32
