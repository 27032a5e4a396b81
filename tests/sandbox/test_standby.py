"""Calls are served by pre-forked standby children, not forked by the zygote on the critical path."""

from __future__ import annotations

from karen_hooks.sandbox import SandboxExecutor

from .conftest import run


def test_a_slot_taken_right_after_release_waits_for_its_standby(monkeypatch):
    ex = SandboxExecutor(slots=1)  # every call takes the slot the previous call has just released
    try:
        z = ex._zygote()
        spawned: list[str] = []
        real_spawn = z.spawn

        def counting_spawn(call_id, *args, **kwargs):  # type: ignore[no-untyped-def]
            spawned.append(call_id)
            return real_spawn(call_id, *args, **kwargs)

        monkeypatch.setattr(z, "spawn", counting_spawn)
        for i in range(8):
            assert run(ex, "echo", n=i).result["params"]["n"] == i
        assert spawned == []
    finally:
        ex.close()
