from karen_hooks import hookimpl


@hookimpl
def karen_intent():
    return [{"name": 5, "examples": "not a list"}]
