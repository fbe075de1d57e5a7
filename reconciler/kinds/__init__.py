"""The kinds of channel, registered in one place.

Each kind implements :class:`reconciler.engine.kind.Kind` in its own package
(``reconciler.kinds.<name>``). A third kind is a new package plus one line in
:data:`KINDS`; the engine needs no change. Kinds are imported when first used, so
a command touching only PyPI channels never loads the conda machinery.
"""

from __future__ import annotations

import importlib

from reconciler.config.models import AnyChannelModel
from reconciler.engine.kind import Kind

# kind name (the channel's `kind:` in channels.yaml) → "module:class"
KINDS: dict[str, str] = {
    "conda": "reconciler.kinds.conda.kind:CondaKind",
    "pypi": "reconciler.kinds.pypi.kind:PypiKind",
}


class Registry:
    def __init__(self, kinds: dict[str, str]) -> None:
        self._paths = kinds
        self._loaded: dict[str, Kind] = {}

    def kind_named(self, name: str) -> Kind:
        if name not in self._loaded:
            module, _, attribute = self._paths[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attribute)()
        return self._loaded[name]

    def kind_of(self, channel: AnyChannelModel) -> Kind:
        return self.kind_named(channel.kind)


REGISTRY = Registry(KINDS)
