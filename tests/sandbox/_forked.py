"""Run a check in a forked child of the test process, as an unused unprivileged uid, and get its JSON back."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from karen_hooks.sandbox._layers import read_to_eof


def as_uid_in_child(uid: int, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; in the child drop to ``uid`` (gid the same, no groups) and run ``check``; return what it returned.

    An exception in the child comes back as ``{"error": "<type>: <message>"}``. Needs root.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        os.close(r)
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)  # also clears "dumpable", as a uid change does
            out = check()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = read_to_eof(r)
    os.waitpid(pid, 0)
    return dict(json.loads(data.decode()))
