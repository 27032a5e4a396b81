"""Test plugin: greets, prints, reports its ctx."""
import asyncio
import sys

from karen_hooks import hookimpl

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "minLength": 1}, "times": {"type": "integer", "minimum": 1, "maximum": 50}}, "required": ["name"], "additionalProperties": False}
CALLS = []


@hookimpl
def karen_intent():
    return [
        {"name": "hello.greet", "description": "greet someone", "examples": ["say hello"], "params": SCHEMA},
        {"name": "hello.whoami", "description": "report the caller", "required_roles": ["admin", "auditor"]},
        {"name": "hello.fail", "description": "always raises"},
    ]


@hookimpl
async def karen_run(intent, params, ctx):
    CALLS.append(intent)
    if intent == "hello.fail":
        raise ZeroDivisionError("hello.fail was asked to fail")
    if intent == "hello.whoami":
        return {"user_id": ctx.user_id, "tenant_id": ctx.tenant_id, "roles": ctx.roles, "intent": ctx.intent}
    for i in range(params.get("times", 1)):
        print(f"greeting {params['name']} #{i}")
        print(f"err {params['name']}", file=sys.stderr)
        await asyncio.sleep(0)
    return {"greeting": f"hello {params['name']}"}
