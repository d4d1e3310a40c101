"""The component registry: what plugins registered, under which name, from which plugin."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from ganforge.errors import PluginError, did_you_mean

#: Component kinds, each filled by its registration hook.
REGISTRATION_HOOKS = {
    "generator": "ganforge_register_generators",
    "discriminator": "ganforge_register_discriminators",
    "loss": "ganforge_register_losses",
    "regularizer": "ganforge_register_regularizers",
    "dataset": "ganforge_register_datasets",
    "feature_extractor": "ganforge_register_feature_extractors",
    "metric": "ganforge_register_metrics",
    "augmentation": "ganforge_register_augmentations",
}
KINDS = tuple(REGISTRATION_HOOKS)

#: Arguments the core passes to each kind's factory; a recipe may not set them.
CORE_ARGS: dict[str, tuple[str, ...]] = {
    "generator": ("resolution", "channels", "num_classes"),
    "discriminator": ("resolution", "channels", "num_classes"),
    "loss": (),
    "regularizer": (),
    "dataset": ("resolution",),
    "feature_extractor": (),
    "metric": (),
    "augmentation": (),
}


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable
    plugin: str
    distribution: str | None = None
    version: str | None = None
    conditional: bool = False
    summary: str = ""

    def signature(self) -> inspect.Signature:
        return inspect.signature(self.factory)


class Register:
    """Handed to a registration hook: ``register(name, factory, conditional=False)``."""

    def __init__(self, registry: Registry, kind: str, plugin: str, distribution, version):
        self._registry, self.kind = registry, kind
        self._plugin, self._distribution, self._version = plugin, distribution, version

    def __call__(
        self, name: str, factory: Callable, *, conditional: bool = False, summary: str = ""
    ) -> None:
        """Register ``factory`` as the ``kind`` named ``name``.

        ``conditional=True`` declares that the component uses class labels ``y``.
        ``summary`` is shown by ``ganforge plugins`` (default: the docstring's first line).
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(
                f"plugin {self._plugin!r} registered an invalid {self.kind} name {name!r}"
            )
        if not callable(factory):
            raise PluginError(f"plugin {self._plugin!r}: {self.kind} {name!r} is not callable")
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        entry = Entry(
            self.kind,
            name,
            factory,
            self._plugin,
            self._distribution,
            self._version,
            conditional,
            summary or (doc[0] if doc else ""),
        )
        self._registry.add(entry)


@dataclass
class Registry:
    """All registered components, by kind and name."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, entry: Entry) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing is not None:
            raise PluginError(
                f"{entry.kind} {entry.name!r} is registered twice: by plugin {existing.plugin!r} "
                f"and by plugin {entry.plugin!r}; block one with GANFORGE_DISABLE_PLUGINS"
            )
        self.entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def find(self, kind: str, name: str) -> Entry | None:
        return self.entries[kind].get(name)

    def get(self, kind: str, name: str) -> Entry:
        entry = self.find(kind, name)
        if entry is None:
            raise PluginError(self.unknown_message(kind, name))
        return entry

    def unknown_message(self, kind: str, name: str) -> str:
        known = self.names(kind)
        hint = did_you_mean(name, known) or (f"; known: {', '.join(known)}" if known else "")
        return f"unknown {kind} {name!r}{hint}"

    def build(self, kind: str, name: str, core_args: dict, kwargs: dict):
        """Call the factory of ``kind`` ``name`` with the core's arguments and the recipe's."""
        return self.get(kind, name).factory(**core_args, **kwargs)
