"""The component registry: what plugins registered, under which name, from which plugin."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ganforge.errors import GanforgeError, PluginError, RecipeError, did_you_mean

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
    "input": "ganforge_register_inputs",
}
KINDS = tuple(REGISTRATION_HOOKS)
#: The recipe table each kind's options come from, where it is not the kind's own name;
#: regularizers and metrics are sub-tables named after the component.
TABLES = {
    "dataset": "data",
    "augmentation": "augment",
    "feature_extractor": "eval.extractor",
    "regularizer": "regularizers.{name}",
    "metric": "eval.metrics.{name}",
}

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
    "input": (),
}
#: What the core also passes to a generator's or discriminator's factory when the recipe has
#: an ``[input]`` (the generator's input, derived from each sample): the input's channels and
#: side. A generator must accept them then; a discriminator that accepts them is conditioned
#: on the input (``D(x, y, source=...)``). A recipe may not set them.
INPUT_ARGS = ("input_channels", "input_resolution")


def plugin_origin(plugin: str, distribution: str | None, version: str | None) -> str:
    """``plugin 'NAME' (DISTRIBUTION VERSION)``: how every plugin error names its source."""
    where = f"{distribution} {version or ''}".strip() if distribution else "registered directly"
    return f"plugin {plugin!r} ({where})"


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

    @property
    def origin(self) -> str:
        return plugin_origin(self.plugin, self.distribution, self.version)


@dataclass(frozen=True)
class RecipeEntry:
    """A recipe file a plugin ships, run by its full name ``PLUGIN:NAME``."""

    name: str
    path: Path
    plugin: str
    distribution: str | None = None
    version: str | None = None

    @property
    def origin(self) -> str:
        return plugin_origin(self.plugin, self.distribution, self.version)


class _PluginRegister:
    """What every ``register`` object knows: the registry and the plugin being called."""

    kind: str

    def __init__(self, registry: Registry, plugin: str, distribution, version):
        self._registry = registry
        self._plugin, self._distribution, self._version = plugin, distribution, version

    @property
    def origin(self) -> str:
        return plugin_origin(self._plugin, self._distribution, self._version)

    def _check_name(self, name: object) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"{self.origin} registered an invalid {self.kind} name {name!r}")


class Register(_PluginRegister):
    """Handed to a registration hook: ``register(name, factory, conditional=False)``."""

    def __init__(self, registry: Registry, kind: str, plugin: str, distribution, version):
        super().__init__(registry, plugin, distribution, version)
        self.kind = kind

    def __call__(
        self, name: str, factory: Callable, *, conditional: bool = False, summary: str = ""
    ) -> None:
        """Register ``factory`` as the ``kind`` named ``name``.

        ``conditional=True`` declares that the component uses class labels ``y``.
        ``summary`` is shown by ``ganforge plugins`` (default: the docstring's first line).
        """
        self._check_name(name)
        if not callable(factory):
            raise PluginError(f"{self.origin}: {self.kind} {name!r} is not callable")
        self._check_signature(name, factory)
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

    def _check_signature(self, name: str, factory: Callable) -> None:
        """The core calls factories with keywords only: its own arguments plus the recipe's."""
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # some builtins have no signature: nothing to check
            return
        params = signature.parameters.values()
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        keywords = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        missing = [a for a in CORE_ARGS[self.kind] if a not in keywords and not takes_any]
        positional = [
            p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty
        ]
        if missing or positional:
            need = (
                f"accept the keyword argument(s) {', '.join(missing)}, which the core passes"
                if missing
                else f"not require positional-only argument(s) {', '.join(positional)}"
            )
            raise PluginError(
                f"{self.origin}: {self.kind} {name!r} has the wrong signature: its factory "
                f"{getattr(factory, '__qualname__', factory)}{signature} must {need}"
            )


class RecipeRegister(_PluginRegister):
    """Handed to ``ganforge_register_recipes``: ``register(name, path)``.

    The recipe runs as ``ganforge PLUGIN:NAME`` (``PLUGIN`` is the plugin's entry-point name).
    """

    kind = "recipe"

    def __call__(self, name: str, path: str | os.PathLike) -> None:
        """Register the TOML file at ``path`` (inside the plugin's package) as ``PLUGIN:NAME``."""
        self._check_name(name)
        try:
            file = Path(os.fspath(path))
        except TypeError:
            raise PluginError(
                f"{self.origin}: recipe {name!r} needs a file path, got {path!r}"
            ) from None
        if not file.is_file():
            raise PluginError(f"{self.origin}: recipe {name!r} names a missing file {file}")
        full = f"{self._plugin}:{name}"
        entry = RecipeEntry(full, file, self._plugin, self._distribution, self._version)
        self._registry.add_recipe(entry)


@dataclass
class Registry:
    """All registered components, by kind and name, and the recipes plugins ship."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    recipes: dict[str, RecipeEntry] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)  # installed plugins that were blocked
    blocked_names: frozenset[str] = frozenset()  # every plugin name blocked, installed or not

    def add(self, entry: Entry) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing is not None:
            raise PluginError(
                f"{entry.kind} {entry.name!r} is registered twice: by {existing.origin} "
                f"and by {entry.origin}; block one with GANFORGE_DISABLE_PLUGINS"
            )
        self.entries[entry.kind][entry.name] = entry

    def add_recipe(self, entry: RecipeEntry) -> None:
        if entry.name in self.recipes:
            raise PluginError(f"{entry.origin} registered recipe {entry.name!r} twice")
        self.recipes[entry.name] = entry

    def recipe(self, name: str) -> RecipeEntry:
        """The recipe registered as ``PLUGIN:NAME``, or a PluginError suggesting a close one."""
        if name not in self.recipes:
            known = sorted(self.recipes)
            hint = did_you_mean(name, known) or (f"; known: {', '.join(known)}" if known else "")
            raise PluginError(f"no recipe file {name!r}, and no plugin registers that name{hint}")
        return self.recipes[name]

    def registered(self) -> set[str]:
        """Every entry as ``"KIND NAME"`` (recipes included)."""
        found = {f"{kind} {name}" for kind, entries in self.entries.items() for name in entries}
        return found | {f"recipe {name}" for name in self.recipes}

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
        close = did_you_mean(name, known)
        listed = close or (f"; known: {', '.join(known)}" if known else "")
        if self.blocked:  # a blocked plugin may be the one that has it: said even beside a guess
            return (
                f"unknown {kind} {name!r}{listed}. Installed but blocked by "
                f"GANFORGE_DISABLE_PLUGINS, and so not searched: {', '.join(self.blocked)}"
            )
        if close:
            return f"unknown {kind} {name!r}{close}"
        return (
            f"unknown {kind} {name!r}{listed}. No installed plugin registers it: a method "
            "shipped as a package appears once it is installed (`ganforge plugins` lists what "
            "each installed plugin provides)"
        )

    def build(
        self,
        kind: str,
        name: str,
        core_args: dict,
        kwargs,
        expected: type | None = None,
        *,
        where: str | None = None,
        source: str | None = None,
    ):
        """Call the factory of ``kind`` ``name`` with the core's arguments and the recipe's.

        The one way the core builds a component, under one error rule: an unknown name, or
        options the factory rejects (ValueError/TypeError), is a RecipeError naming the recipe
        table ``where`` (default: the kind's own table) in the recipe file ``source``; anything
        else it raises, or an object that is not an ``expected``, is the plugin's error. A
        factory's own GanforgeError (a DataError, say) passes through as it is.
        """
        table = where or TABLES.get(kind, kind).format(name=name)
        entry = self.find(kind, name)
        if entry is None:
            raise RecipeError([(table, self.unknown_message(kind, name))], source)
        try:
            obj = entry.factory(**core_args, **kwargs)
        except GanforgeError:
            raise
        except (ValueError, TypeError) as err:  # a factory rejecting the recipe's options
            problem = f"{kind} {name!r} rejected its options: {err}"
            raise RecipeError([(table, problem)], source) from None
        except (Exception, SystemExit) as err:  # anything else is the plugin's failure
            raise PluginError(
                f"{kind} {name!r} of {entry.origin} failed to build: {type(err).__name__}: {err}"
            ) from err
        if expected is not None and not isinstance(obj, expected):
            raise PluginError(
                f"{kind} {name!r} from {entry.origin} returned {type(obj).__name__}, not a "
                f"{expected.__name__}"
            )
        if kind == "generator":
            _check_latent_shape(obj, name, entry.origin)
        return obj


def _check_latent_shape(generator, name: str, origin: str) -> None:
    shape = getattr(generator, "latent_shape", None)
    no_noise = isinstance(shape, (tuple, list)) and tuple(shape) == (0,)  # input-taking G
    if not no_noise and not (
        isinstance(shape, (tuple, list))
        and shape
        and all(isinstance(d, int) and d > 0 for d in shape)
    ):
        raise PluginError(
            f"generator {name!r} from {origin} has no valid latent_shape (a tuple of "
            f"positive sizes such as (128,), or (0,) for one that takes an input and no "
            f"noise; got {shape!r}): the core draws its latents from it"
        )
