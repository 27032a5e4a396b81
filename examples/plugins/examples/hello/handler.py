"""An old-format directory plugin: ``run(params)`` returns the result.

It runs unchanged under karen-hooks (``KARI_PLUGIN_DIR=examples/plugins``)
and ``karen plugins migrate`` turns it into a packaged distribution.
"""


def run(params):
    name = params.get("name") or "world"
    print(f"greeting {name}")
    return {"message": f"Hello, {name}!"}
