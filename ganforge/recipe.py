"""Recipes: TOML + overrides, validated against a typed schema and the components' signatures.

Core sections (``[run]``, ``[train]``, ``[optim.*]`` and the core keys of component tables) are
checked against :data:`SCHEMA`; every other key of a component table is a keyword argument of
the registered factory and is bound to its signature. Every problem is collected and reported
at once in a :class:`~ganforge.errors.RecipeError` naming the TOML key.
"""

from __future__ import annotations

import copy
import inspect
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganforge.errors import RecipeError, did_you_mean
from ganforge.registry import CORE_ARGS, INPUT_ARGS, Registry
from ganforge.schedules import initial, is_schedule, resolve
from ganforge.schema import (
    COMPONENT_SECTIONS,
    CRITIC_KEYS,
    CRITIC_OPTIM,
    CRITIC_TABLES,
    EVAL_TABLES,
    OPTIM,
    OPTIMIZER,
    REGULARIZER_KEYS,
    REQUIRED,
    SCHEMA,
    SECTION_ROLES,
    SECTIONS,
)
from ganforge.tomlwriter import dump_toml


@dataclass(frozen=True)
class Component:
    """A recipe table naming a registry entry plus the keyword arguments for its factory."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``tables`` is the resolved TOML (defaults filled in)."""

    tables: Mapping[str, Any]
    source: str = "<recipe>"

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.tables.get(name, {}))

    def component(self, section: str) -> Component:
        table = self.section(section)
        core = SCHEMA[section]
        return Component(table["name"], {k: v for k, v in table.items() if k not in core})

    def regularizer_tables(self) -> dict[str, dict[str, Any]]:
        """Every regularizer's table by its key: ``NAME`` for ``[regularizers.NAME]``,
        ``critics.CRITIC.NAME`` for a further critic's own (the registry name is the key's
        last part)."""
        found = dict(self.tables.get("regularizers", {}))
        for critic, table in self.critics():
            for name, sub in table.get("regularizers", {}).items():
                found[f"critics.{critic}.{name}"] = sub
        return found

    def regularizers(self) -> list[tuple[str, int, dict[str, Any]]]:
        """``(key, every, kwargs)`` for each regularizer (:meth:`regularizer_tables`); a
        scheduled option is given its value at 0 images (``ganforge.schedules`` sets it every
        step)."""
        return [
            (
                key,
                table.get("every", 1),
                {k: initial(v) for k, v in table.items() if k not in REGULARIZER_KEYS},
            )
            for key, table in self.regularizer_tables().items()
        ]

    def critics(self) -> list[tuple[str, dict[str, Any]]]:
        """``(name, table)`` of each further critic (``[critics.NAME]``), in recipe order."""
        return [(name, dict(table)) for name, table in self.tables.get("critics", {}).items()]

    def get(self, dotted: str) -> Any:
        node: Any = self.tables
        for part in dotted.split("."):
            node = node[part]
        return node

    @property
    def run_dir(self) -> Path:
        run = self.tables["run"]
        return Path(run["out_dir"] or Path("runs") / run["name"])

    def to_toml(self) -> str:
        return dump_toml(self.tables)

    def fixed_values(self) -> dict[str, Any]:
        """Flattened keys that shape the models or the optimisation (a resume keeps them)."""
        return {key: value for key, value in flatten(self.tables).items() if role_of(key)}


def role_of(dotted: str) -> str | None:
    """The role of a flattened key: "model", "optim" or None."""
    section, _, rest = dotted.partition(".")
    if section == "regularizers":
        return OPTIM
    if section == "optim":
        return OPTIM
    key = rest.split(".")[0]
    core = SCHEMA.get(section, {})
    if key in core:
        return core[key].role
    return SECTION_ROLES.get(section)


def core_default(dotted: str, missing: Any) -> Any:
    """The default of a core key (``data.clusters``, ``optim.generator.lr_decay``), or
    ``missing``: what a recipe saved before the key existed means by leaving it out."""
    section, _, rest = dotted.partition(".")
    if section == "optim":
        rest = rest.partition(".")[2]
    spec = (OPTIMIZER if section == "optim" else SCHEMA.get(section, {})).get(rest)
    return missing if spec is None or spec.default is REQUIRED else spec.default


def flatten(tables: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tables.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --------------------------------------------------------------------------- loading


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:  # its message names line and column
        raise RecipeError([("", f"invalid TOML: {err}")], source) from None
    except RecursionError:
        raise RecipeError([("", "invalid TOML: nested too deeply")], source) from None


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([("", f"recipe file not found: {path}")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError([("", f"cannot read recipe {path}: {err}")]) from None
    return parse_toml(text, str(path))


def parse_override_value(text: str) -> Any:
    """An override value is TOML (``3``, ``1e-4``, ``true``, ``[0.5, 0.9]``) or a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(tables: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides at any depth, creating tables on the way.

    Overriding a component's ``name`` with another one (``data.name=synthetic``) starts its
    table afresh: the file's options for the old component are dropped, its core keys (e.g.
    ``data.resolution``) and the other overrides are kept.
    """
    problems = []
    for item in sorted(overrides, key=lambda o: not o.partition("=")[0].strip().endswith(".name")):
        dotted, sep, value = item.partition("=")
        parts = dotted.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            problems.append((item, "an override must look like section.key=value"))
            continue
        section = parts[0].strip()
        table = tables.get(section)
        if (
            len(parts) == 2
            and parts[1].strip() == "name"
            and section in COMPONENT_SECTIONS
            and isinstance(table, dict)
            and table.get("name") != parse_override_value(value)
        ):
            tables[section] = {k: v for k, v in table.items() if k in SCHEMA[section]}
        node = tables
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part.strip(), {})
            if not isinstance(child, dict):
                problems.append((".".join(parts[: depth + 1]), "is a value, not a table"))
                break
            node = child
        else:
            node[parts[-1].strip()] = parse_override_value(value.strip())
    if problems:
        raise RecipeError(problems, "overrides")
    return tables


#: ``PLUGIN:NAME``: a recipe a plugin ships (``ganforge_register_recipes``).
RECIPE_NAME = re.compile(r"^[\w.-]+:\w+$")


def recipe_path(spec: str | Path, registry: Registry | None) -> Path:
    """The file a recipe argument names: a path, or ``PLUGIN:NAME`` that a plugin registered.

    An existing file always wins, so a path that happens to contain a colon still works.
    """
    path = Path(spec)
    if registry is None or path.exists() or not RECIPE_NAME.match(str(spec)):
        return path
    return registry.recipe(str(spec)).path


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None
) -> Recipe:
    """Read, override and validate a recipe file, or a plugin's recipe named ``PLUGIN:NAME``."""
    path = recipe_path(path, registry)
    tables = apply_overrides(read_recipe_file(path), overrides)
    return validate(tables, registry, source=str(path))


# --------------------------------------------------------------------------- validation


def validate(
    tables: Mapping[str, Any], registry: Registry | None, source: str = "<recipe>"
) -> Recipe:
    """Check ``tables`` and return the resolved Recipe, or raise one RecipeError with every problem.

    Without a registry only the core schema is checked (component kwargs are not bound).
    """
    problems: list[tuple[str, str]] = []
    resolved: dict[str, Any] = {}
    for section in tables:
        if section not in SECTIONS:
            problems.append((section, f"unknown section{did_you_mean(section, SECTIONS)}"))
    for section in SECTIONS:
        value = tables.get(section, {})
        if not isinstance(value, Mapping):
            problems.append((section, "must be a table"))
            value = {}
        if section == "regularizers":
            resolved[section] = _check_regularizers(value, registry, problems)
        elif section == "critics":
            resolved[section] = _check_critics(value, registry, problems)
        elif section == "optim":
            resolved[section] = _check_optim(value, problems)
        elif section == "eval":
            resolved[section] = _check_eval(value, registry, problems)
        else:
            resolved[section] = _check_table(
                section,
                value,
                SCHEMA[section],
                problems,
                extra_allowed=section in COMPONENT_SECTIONS,
            )
    ema = resolved.get("ema", {})
    standing = ema.get("standing_stats")
    averaged = ema.get("decay") != 0 or ema.get("half_life_kimg") != 0
    if isinstance(standing, int) and standing > 0 and not averaged:
        problems.append(("ema.standing_stats", "re-estimates the EMA's statistics: set ema.decay"))
    if ema.get("decay") != 0 and ema.get("half_life_kimg") not in (0, None):
        problems.append(("ema.half_life_kimg", "gives the average's decay: drop ema.decay"))
    if ema.get("rampup") not in (0, None) and ema.get("half_life_kimg") in (0, None):
        problems.append(("ema.rampup", "ramps the half-life up: set ema.half_life_kimg"))
    if resolved.get("input", {}).get("name") and isinstance(standing, int) and standing > 0:
        problems.append(("ema.standing_stats", "is not available for generators with an [input]"))
    augment = resolved.get("augment", {})
    if is_schedule(augment.get("p")) and augment.get("adaptive") is True:
        problems.append(("augment.p", "follows a schedule: set augment.adaptive = false"))
    if registry is not None:
        conditional = resolved["data"].get("conditional") is True
        clusters = resolved["data"].get("clusters")
        clusters = clusters if isinstance(clusters, int) and clusters > 0 else 0
        conditioning = "data.conditional = true" if conditional else None
        if clusters and conditional:
            problems.append(("data.clusters", "labels or clusters: set data.conditional = false"))
        elif clusters:
            conditioning = f"data.clusters = {clusters}"
        has_input = bool(resolved["input"].get("name"))
        for section, kind in COMPONENT_SECTIONS.items():
            table = resolved[section]
            _check_component(section, kind, table, registry, conditioning, problems, has_input)
        for name, table in resolved["critics"].items():
            _check_critic(f"critics.{name}", table, registry, conditioning, problems)
    if problems:
        raise RecipeError(problems, source)
    if not resolved["run"]["out_dir"]:
        resolved["run"]["out_dir"] = str(Path("runs") / resolved["run"]["name"])
    return Recipe(tables=resolved, source=source)


def _check_table(prefix, table, schema, problems, *, extra_allowed=False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key in schema.items():
        where = f"{prefix}.{name}"
        if name not in table:
            if key.default is REQUIRED:
                problems.append((where, "is required"))
            else:
                out[name] = copy.deepcopy(key.default)
            continue
        value = table[name]
        if key.schedulable:
            value = _resolve_schedules(where, value, problems)
            if is_schedule(value):
                out[name] = resolve(where, value, problems, key.check)
                continue
        if not _is_instance(value, key.type):
            problems.append((where, f"expected {_type_name(key.type)}, got {_describe(value)}"))
            continue
        if isinstance(value, int) and not isinstance(value, bool) and key.type is float:
            value = float(value)
        message = key.check(value) if key.check else None
        if message:
            problems.append((where, f"{message}, got {value!r}"))
        out[name] = value
    for name, value in table.items():
        if name in schema:
            continue
        if extra_allowed:
            out[name] = value  # bound to the component's factory signature later
        else:
            problems.append((f"{prefix}.{name}", f"unknown key{did_you_mean(name, schema)}"))
    return out


def _resolve_schedules(where: str, value: Any, problems) -> Any:
    """A list's schedule items resolved (``betas = [0.0, {schedule = ...}]``); the item's
    range is the list's own check."""
    if not isinstance(value, list):
        return value
    return [
        resolve(f"{where}.{i}", item, problems) if is_schedule(item) else item
        for i, item in enumerate(value)
    ]


def _check_optim(table, problems) -> dict[str, Any]:
    out = {}
    for name in table:
        if name not in ("generator", "discriminator"):
            hint = did_you_mean(name, ("generator", "discriminator"))
            problems.append((f"optim.{name}", f"unknown optimizer table{hint}"))
    for model in ("generator", "discriminator"):
        sub = table.get(model, {})
        if not isinstance(sub, Mapping):
            problems.append((f"optim.{model}", "must be a table"))
            sub = {}
        out[model] = _check_table(f"optim.{model}", sub, OPTIMIZER, problems)
        resolved = out[model]
        if resolved.get("lr_decay") == "linear" and is_schedule(resolved.get("lr")):
            problems.append(
                (f"optim.{model}.lr_decay", 'lr follows a schedule: set lr_decay = "none"')
            )
        elif resolved.get("lr_decay") == "linear" and not (
            isinstance(resolved.get("lr_decay_steps"), int)
            and resolved["lr_decay_steps"] > resolved.get("lr_decay_start", 0)
        ):
            problems.append(
                (
                    f"optim.{model}.lr_decay_steps",
                    "linear decay needs lr_decay_steps > lr_decay_start",
                )
            )
    return out


def _check_regularizers(table, registry, problems, prefix="regularizers") -> dict[str, Any]:
    out = {}
    for name, sub in table.items():
        where = f"{prefix}.{name}"
        if not isinstance(sub, Mapping):
            problems.append((where, "must be a table of the regularizer's options"))
            continue
        resolved = _check_table(where, sub, REGULARIZER_KEYS, problems, extra_allowed=True)
        for key, value in resolved.items():  # every number option may follow a schedule
            if is_schedule(value):
                resolved[key] = resolve(f"{where}.{key}", value, problems)
        if registry is not None:
            entry = registry.find("regularizer", name)
            if entry is None:
                problems.append((where, registry.unknown_message("regularizer", name)))
            else:
                kwargs = {k: initial(v) for k, v in resolved.items() if k not in REGULARIZER_KEYS}
                _bind_kwargs(where, entry, kwargs, problems)
        out[name] = resolved
    return out


def _check_critics(table, registry, problems) -> dict[str, Any]:
    """Each ``[critics.NAME]`` table: its core keys, its factory's options, and its ``loss``
    (a table naming a loss; default the recipe's ``[loss]``), ``optim`` (what differs from
    ``[optim.discriminator]``) and ``regularizers`` (D-phase terms on this critic)."""
    out = {}
    for name, sub in table.items():
        where = f"critics.{name}"
        if name == "discriminator" or not re.fullmatch(r"[A-Za-z_]\w*", name):
            problems.append((where, "a critic's name is a word other than 'discriminator'"))
            continue
        if not isinstance(sub, Mapping):
            problems.append((where, "must be a table naming a discriminator"))
            continue
        core = {k: v for k, v in sub.items() if k not in CRITIC_TABLES}
        resolved = _check_table(where, core, CRITIC_KEYS, problems, extra_allowed=True)
        loss = sub.get("loss", {})
        if not isinstance(loss, Mapping) or (loss and not isinstance(loss.get("name"), str)):
            problems.append((f"{where}.loss", 'must be a table naming a loss: { name = "hinge" }'))
            loss = {}
        optim = sub.get("optim", {})
        if not isinstance(optim, Mapping):
            problems.append((f"{where}.optim", "must be a table"))
            optim = {}
        checked = _check_table(f"{where}.optim", optim, CRITIC_OPTIM, problems)
        regularizers = sub.get("regularizers", {})
        if not isinstance(regularizers, Mapping):
            problems.append((f"{where}.regularizers", "must be a table of regularizer tables"))
            regularizers = {}
        resolved["loss"] = dict(loss)
        resolved["optim"] = {k: v for k, v in checked.items() if v is not None}
        resolved["regularizers"] = _check_regularizers(
            regularizers, registry, problems, f"{where}.regularizers"
        )
        out[name] = resolved
    return out


def _check_critic(where, table, registry, conditioning, problems) -> None:
    """A further critic's discriminator and loss against the registry, as their sections'
    are; its regularizers (bound by :func:`_check_critics`) must be D-phase terms."""
    core = {*CRITIC_KEYS, *CRITIC_TABLES}
    discriminator = {k: v for k, v in table.items() if k not in CRITIC_TABLES}
    _check_component(
        where, "discriminator", discriminator, registry, conditioning, problems, core=core
    )
    if table["loss"]:
        loss = f"{where}.loss"
        _check_component(
            loss, "loss", table["loss"], registry, conditioning, problems, core={"name"}
        )
    for reg in table["regularizers"]:
        entry = registry.find("regularizer", reg)
        if entry is not None and getattr(entry.factory, "phase", "d") != "d":
            problem = "is a G-phase term: put it in [regularizers], which G's loss reads"
            problems.append((f"{where}.regularizers.{reg}", problem))


def _check_eval(table, registry, problems) -> dict[str, Any]:
    """``[eval]`` keys, ``[eval.extractor_options]`` and one ``[eval.metrics.NAME]`` per metric,
    each bound to its plugin's factory."""
    core = {k: v for k, v in table.items() if k not in EVAL_TABLES}
    out = _check_table("eval", core, SCHEMA["eval"], problems)
    options = table.get("extractor_options", {})
    metrics = table.get("metrics", {})
    for name, value in (("extractor_options", options), ("metrics", metrics)):
        if not isinstance(value, Mapping):
            problems.append((f"eval.{name}", "must be a table"))
    out["extractor_options"] = dict(options) if isinstance(options, Mapping) else {}
    out["metrics"] = {}
    for name, kwargs in (metrics if isinstance(metrics, Mapping) else {}).items():
        where = f"eval.metrics.{name}"
        if not isinstance(kwargs, Mapping):
            problems.append((where, "must be a table of the metric's options"))
            continue
        out["metrics"][name] = dict(kwargs)
        if registry is not None:
            entry = registry.find("metric", name)
            if entry is None:
                problems.append((where, registry.unknown_message("metric", name)))
            else:
                _bind_kwargs(where, entry, dict(kwargs), problems)
    extractor = out.get("extractor")
    if registry is not None and isinstance(extractor, str) and extractor:
        entry = registry.find("feature_extractor", extractor)
        if entry is None:
            problems.append(
                ("eval.extractor", registry.unknown_message("feature_extractor", extractor))
            )
        else:
            _bind_kwargs("eval.extractor_options", entry, out["extractor_options"], problems)
    return out


def _check_component(
    section, kind, table, registry, conditioning, problems, has_input: bool = False, core=None
) -> None:
    """``conditioning`` names the recipe key that makes the run conditional, or is None;
    ``has_input``: the recipe names an ``[input]``; ``core``: the table's keys that are not
    the factory's (default the section's schema)."""
    core = SCHEMA[section] if core is None else core
    name = table.get("name")
    if not isinstance(name, str):
        return  # already reported by the schema check
    if section in ("augment", "input") and not name:
        extra = [k for k in table if k not in SCHEMA[section]]
        if extra:
            problems.append((f"{section}.{extra[0]}", f"{kind} options need {section}.name"))
        return
    entry = registry.find(kind, name)
    if entry is None:
        problems.append((f"{section}.name", registry.unknown_message(kind, name)))
        return
    if conditioning and kind in ("generator", "discriminator") and not entry.conditional:
        problems.append(
            (f"{section}.name", f"{kind} {name!r} cannot condition on labels, but {conditioning}")
        )
    if kind == "loss" and entry.conditional and not conditioning:
        problems.append(
            (
                f"{section}.name",
                f"loss {name!r} needs class labels: set data.conditional = true "
                "(or data.clusters = k)",
            )
        )
    kwargs = {k: v for k, v in table.items() if k not in core}
    _bind_kwargs(section, entry, kwargs, problems)
    if kind == "generator":
        _check_takes_input(entry, name, has_input, problems)


def takes_input(entry) -> bool:
    """Whether a generator's or discriminator's factory accepts the input's shape
    (:data:`~ganforge.registry.INPUT_ARGS`), so that the core can give it an input."""
    try:
        params = inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):
        return False
    return all(a in params for a in INPUT_ARGS) or any(
        p.kind is p.VAR_KEYWORD for p in params.values()
    )


def _check_takes_input(entry, name: str, has_input: bool, problems) -> None:
    """A generator with an ``[input]`` must take one, and one that needs an input (its input
    arguments have no default) needs an ``[input]``."""
    params = inspect.signature(entry.factory).parameters
    needs = any(a in params and params[a].default is params[a].empty for a in INPUT_ARGS)
    if has_input and not takes_input(entry):
        problem = (
            f"generator {name!r} takes no input (its factory has no input_channels and "
            "input_resolution): use a generator that takes one, or remove [input]"
        )
        problems.append(("input.name", problem))
    elif needs and not has_input:
        problem = (
            f"generator {name!r} takes an input: name it in [input] (e.g. "
            'name = "downscale", factor = 4)'
        )
        problems.append(("generator.name", problem))


def _bind_kwargs(prefix, entry, kwargs, problems) -> None:
    """Check recipe kwargs against the factory signature: names, required keys, simple types."""
    try:
        params = inspect.signature(entry.factory, eval_str=True).parameters
    except (NameError, TypeError, ValueError):
        params = inspect.signature(entry.factory).parameters
    core = CORE_ARGS[entry.kind]
    if entry.kind in ("generator", "discriminator"):
        core = (*core, *INPUT_ARGS)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = [
        n
        for n, p in params.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in core
    ]
    for name, value in kwargs.items():
        where = f"{prefix}.{name}"
        if name in core:
            origin = "[input]" if name in INPUT_ARGS else "[data]"
            problems.append((where, f"is set by the core from {origin}; remove it here"))
        elif name in params and name in accepted:
            annotation = params[name].annotation
            if not _matches(value, annotation):
                problems.append(
                    (
                        where,
                        f"{entry.kind} {entry.name!r} expects "
                        f"{_annotation_name(annotation)}, got {_describe(value)}",
                    )
                )
        elif not takes_any:
            hint = did_you_mean(name, [*accepted, *SCHEMA.get(prefix, {})])
            if not hint and accepted:
                hint = f"; options: {', '.join(accepted)}"
            problems.append((where, f"unknown option of {entry.kind} {entry.name!r}{hint}"))
    for name in accepted:
        p = params[name]
        if p.default is p.empty and name not in kwargs:
            problems.append((f"{prefix}.{name}", f"is required by {entry.kind} {entry.name!r}"))


# --------------------------------------------------------------------------- types


def _is_instance(value, expected) -> bool:
    types_ = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types_
    if isinstance(value, int) and float in types_:
        return True
    return isinstance(value, types_)


def _matches(value, annotation) -> bool:
    """Whether a TOML value fits a simple annotation; unknown annotations accept anything."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return isinstance(value, list)
    if origin in (dict, Mapping) or annotation is dict:
        return isinstance(value, dict)
    if annotation in (int, float, bool, str):
        return _is_instance(value, annotation)
    return True


def _annotation_name(annotation) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _type_name(expected) -> str:
    types_ = expected if isinstance(expected, tuple) else (expected,)
    names = {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names.get(t, t.__name__) for t in types_)


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}"
