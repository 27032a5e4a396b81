"""Old path of :class:`karen_hooks.PluginRouter`."""

from ._require import require

PluginRouter = require("karen_hooks", "PluginRouter", __name__)

__all__ = ["PluginRouter"]
