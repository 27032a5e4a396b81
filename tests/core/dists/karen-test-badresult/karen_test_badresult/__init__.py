from karen_hooks import hookimpl


@hookimpl
def karen_intent():
    return [{"name": "badresult.obj"}]


@hookimpl
def karen_run():
    return object()
