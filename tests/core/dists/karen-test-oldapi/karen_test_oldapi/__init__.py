from karen_hooks import hookimpl


@hookimpl
def karen_intent():
    return [{"name": "oldapi.x"}]
