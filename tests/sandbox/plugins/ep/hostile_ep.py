"""An entry-point style (pluggy) plugin used by the sandbox tests, loaded via ``code_paths``."""

import os

from pydantic import BaseModel

from karen_hooks import hookimpl

print("imported hostile_ep at top level")  # runs only inside the sandbox


class Greet(BaseModel):
    name: str
    times: int = 1


@hookimpl
def karen_intent():
    return [
        {"name": "ep.greet", "description": "greet someone", "params": Greet},
        {"name": "ep.env", "description": "show env", "params": {"type": "object", "properties": {}}},
    ]


@hookimpl
def karen_run(intent, params, ctx):
    if intent == "ep.greet":
        return {"type": type(params).__name__, "text": " ".join(["hi " + params.name] * params.times),
                "tenant": ctx.tenant_id}
    return {"env": dict(os.environ), "uid": os.getuid()}


@hookimpl
def karen_render_prompt(intent, params, ctx):
    if intent == "ep.bomb":
        return "{{ 'x' * 10**9 }}"
    return "Hello {{ name }}!"


@hookimpl
def karen_ui_component(intent, result, ctx):
    return {"type": "card", "title": str(result)}
