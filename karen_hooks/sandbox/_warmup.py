"""A stand-in plugin module: standby children load it (without a call) to warm their import path."""


def run(params, ctx=None):  # type: ignore[no-untyped-def]
    return {"echo": params}
