"""Records that it was imported, so tests can prove it never was."""
import os

os.environ["KAREN_TEST_MARKER_IMPORTED"] = "1"

from karen_hooks import hookimpl


@hookimpl
def karen_intent():
    return [{"name": "marker.ping"}]


@hookimpl
def karen_run():
    return "pong"
