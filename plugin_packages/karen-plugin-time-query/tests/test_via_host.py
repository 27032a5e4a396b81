"""time-query through a real host, with the karen-hooks pytest plugin's fixtures."""

import pytest

from karen_hooks import AccessDenied, InvalidParams


@pytest.mark.karen_plugins("time-query")
def test_runs_through_the_host(karen_host, karen_user) -> None:
    result, stdout, stderr = karen_host.run("time-query", {"format": "unix"}, user=karen_user())
    assert isinstance(result["time"], int) and result["format"] == "unix"
    assert (stdout, stderr) == ("", "")


@pytest.mark.karen_plugins("time-query")
def test_bare_intent_name_and_admin_role(karen_host, karen_user) -> None:
    out = karen_host.run("time.now", {"timezone": "Asia/Tokyo"}, user=karen_user(roles=["admin"]))
    assert out.plugin == "time-query" and out.result["time"].endswith("+09:00")


@pytest.mark.karen_plugins("time-query")
def test_needs_the_user_role(karen_host, karen_user) -> None:
    with pytest.raises(AccessDenied, match="needs one of the roles"):
        karen_host.run("time-query", user=karen_user(roles=["guest"]))


@pytest.mark.karen_plugins("time-query")
def test_params_are_validated_by_the_host(karen_host) -> None:
    with pytest.raises(InvalidParams, match="timezone"):
        karen_host.run("time-query", {"timezone": "Mars/Olympus"})


@pytest.mark.karen_plugins("time-query", sandbox=True)
def test_runs_in_the_real_sandbox(karen_host, karen_user) -> None:
    assert karen_host.plugin("time-query").sandboxed
    result, _, _ = karen_host.run("time-query", {"format": "iso"}, user=karen_user())
    assert result["timezone"] == "UTC"
