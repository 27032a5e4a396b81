"""Test plugin: an object target, a pydantic model, and hooks taking fewer args than the spec."""
from pydantic import BaseModel

from karen_hooks import hookimpl


class Params(BaseModel):
    n: int
    label: str = "x"


class Plugin:
    calls = 0

    @hookimpl
    def karen_intent(self):
        return [{"name": "minimal.double", "params": Params, "required_roles": ["user"]}]

    @hookimpl
    def karen_run(self, params):
        Plugin.calls += 1
        assert isinstance(params, Params)
        return {"double": params.n * 2, "label": params.label}


plugin = Plugin()
