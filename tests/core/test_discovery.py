"""Discovery of real installed entry-point plugins: isolation, allow/deny lists, duplicates, strict mode."""

from __future__ import annotations

import os
import sys

import pytest

from karen_hooks import PluginLoadError, PluginNotFound, PluginRouter

from .conftest import RecordingExecutor, settings

TRUST_ALL = ["hello", "minimal", "broken", "bad-intents", "zz-dup", "marker", "oldapi", "badresult"]


def problems(router: PluginRouter) -> dict[str, str]:
    return {p.plugin: p.reason for p in router.problems}


def test_broken_plugins_are_reported_and_the_rest_load(installed, recorder) -> None:
    router = PluginRouter(settings(trusted_plugins=TRUST_ALL, disable_plugins=["zz-dup"]), executor=recorder)
    assert {p.name for p in router.list_plugins()} >= {"hello", "minimal", "marker", "badresult"}
    probs = problems(router)
    assert "karen-test-broken explodes at import" in probs["broken"]
    assert "intent #0 is invalid" in probs["bad-intents"] and "'name'" in probs["bad-intents"]
    assert "'examples'" in probs["bad-intents"]
    dist = {p.plugin: p.distribution for p in router.problems}
    assert dist["broken"] == "karen-test-broken"


def test_duplicate_intent_is_refused_for_every_claimant(installed, recorder) -> None:
    """Load order must not decide which plugin gets an intent's calls (and its callers' params)."""
    router = PluginRouter(settings(trusted_plugins=TRUST_ALL), executor=recorder)
    probs = problems(router)
    assert "intent 'hello.greet' is also claimed by plugin 'zz-dup'; neither is loaded" in probs["hello"]
    assert "intent 'hello.greet' is also claimed by plugin 'hello'; neither is loaded" in probs["zz-dup"]
    for name in ("hello", "zz-dup"):
        with pytest.raises(PluginNotFound, match="skipped at load"):
            router.get_plugin(name)
    with pytest.raises(PluginNotFound):
        router.plugin_for_intent("hello.greet")
    router = PluginRouter(settings(trusted_plugins=TRUST_ALL, disable_plugins=["zz-dup"]), executor=recorder)
    assert router.plugin_for_intent("hello.greet").name == "hello"  # disabling one settles it


def test_hookspec_api_version_is_checked(installed, recorder) -> None:
    router = PluginRouter(settings(trusted_plugins=TRUST_ALL), executor=recorder)
    reason = problems(router)["oldapi"]
    assert "requires karen-hooks<1" in reason and "this host is karen-hooks 1.0.0" in reason
    assert "oldapi" not in [p.name for p in router.list_plugins()]


def test_allowlist_never_imports_other_plugins(installed, recorder) -> None:
    router = PluginRouter(settings(load_plugins=["hello"], trusted_plugins=TRUST_ALL), executor=recorder)
    assert [p.name for p in router.list_plugins()] == ["hello"]
    assert "karen_test_marker" not in sys.modules and "karen_test_broken" not in sys.modules
    assert "KAREN_TEST_MARKER_IMPORTED" not in os.environ
    assert router.problems == []


def test_empty_allowlist_loads_nothing(installed, recorder) -> None:
    router = PluginRouter(settings(load_plugins=[], trusted_plugins=TRUST_ALL), executor=recorder)
    assert router.list_plugins() == [] and recorder.described == []


def test_blocklist_never_imports(installed, recorder) -> None:
    router = PluginRouter(settings(disable_plugins=["marker", "broken", "zz-dup"], trusted_plugins=TRUST_ALL),
                          executor=recorder)
    names = [p.name for p in router.list_plugins()]
    assert "marker" not in names and "hello" in names
    assert "KAREN_TEST_MARKER_IMPORTED" not in os.environ and "karen_test_broken" not in sys.modules


def test_env_vars_drive_the_lists(installed, recorder, monkeypatch) -> None:
    monkeypatch.setenv("KAREN_LOAD_PLUGINS", "hello, minimal")
    monkeypatch.setenv("KAREN_DISABLE_PLUGINS", "minimal")
    monkeypatch.setenv("KAREN_TRUSTED_PLUGINS", "hello")
    monkeypatch.delenv("KAREN_CONFIG", raising=False)
    router = PluginRouter(executor=recorder)
    assert [p.name for p in router.list_plugins()] == ["hello"]


def test_untrusted_plugin_code_never_runs_in_the_host(installed, recorder) -> None:
    """Discovery of an untrusted plugin asks the sandbox; the host never imports its module."""
    router = PluginRouter(settings(load_plugins=["marker"]), executor=recorder)
    info = router.get_plugin("marker")
    assert info.sandboxed and not info.trusted
    assert [s.name for s in recorder.described] == ["marker"]
    assert recorder.described[0].target == "karen_test_marker"
    assert recorder.described[0].code_paths and recorder.described[0].code_paths[0].endswith("karen_test_marker")
    assert "karen_test_marker" not in sys.modules and "KAREN_TEST_MARKER_IMPORTED" not in os.environ


def test_untrusted_plugin_with_bad_described_intents_is_skipped(installed) -> None:
    forged = RecordingExecutor({"marker": [{"name": "bad name with spaces"}]})
    router = PluginRouter(settings(load_plugins=["marker"]), executor=forged)
    assert "must be 1-128 characters" in problems(router)["marker"]


def test_strict_mode_turns_load_errors_into_failure(installed, recorder) -> None:
    with pytest.raises(PluginLoadError, match="broken"):
        PluginRouter(settings(load_plugins=["hello", "broken"], trusted_plugins=TRUST_ALL, strict=True), executor=recorder)
    # strict with nothing broken is fine
    PluginRouter(settings(load_plugins=["hello"], trusted_plugins=TRUST_ALL, strict=True), executor=recorder)


def test_plugin_version_is_its_distribution_version(installed, recorder) -> None:
    router = PluginRouter(settings(load_plugins=["hello"], trusted_plugins=["hello"]), executor=recorder)
    info = router.get_plugin("hello")
    assert (info.distribution, info.version) == ("karen-test-hello", "0.1.0")


def test_lookup_api(installed, recorder) -> None:
    router = PluginRouter(settings(load_plugins=["hello", "minimal"], trusted_plugins=TRUST_ALL), executor=recorder)
    assert router.list_intents() == ["hello.fail", "hello.greet", "hello.whoami", "minimal.double"]
    assert router.plugin_for_intent("minimal.double").name == "minimal"
    with pytest.raises(PluginNotFound, match="no plugin or intent named 'nope'"):
        router.get_plugin("nope")
    assert not hasattr(router.get_plugin("hello"), "karen_run")  # a description, not a handler
