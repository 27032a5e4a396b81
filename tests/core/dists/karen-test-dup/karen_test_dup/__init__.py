from karen_hooks import hookimpl


@hookimpl
def karen_intent():
    return [{"name": "hello.greet"}]


@hookimpl
def karen_run():
    return "zz-dup ran"
