"""Settings that follow a schedule over the images seen: learning rates, Adam's betas,
regularizer weights, the EMA and the augmentation probability.

In a recipe, a schedulable number may be given as an inline table instead::

    lr = { schedule = "cosine", start = 2e-4, end = 5e-5, kimg = 20000 }
    betas = [0.0, { schedule = "cosine", start = 0.9, end = 0.99, kimg = 20000 }]

``schedule`` is ``"constant"`` (``start`` throughout), ``"linear"`` or ``"cosine"`` (from
``start`` at 0 images to ``end`` at ``kimg`` thousand images, then ``end``; cosine is R3GAN's
``cosine_decay_with_warmup`` without warm-up). Images seen are ``train.batch_size × n_critic``
a step, as ``kimg`` in ``metrics.jsonl``. A value is a function of the step alone, so a
resumed run recomputes it exactly, and ``train.steps`` can grow without moving the horizon.

Schedulable: ``optim.*.lr`` and each of ``optim.*.betas``, ``ema.decay``,
``ema.half_life_kimg``, ``augment.p`` (not with ``augment.adaptive``) and every number option
of a ``[regularizers.NAME]`` table (the regularizer must keep the option in an attribute of
the same name, as the built-in ones do: the core sets it before each step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SHAPES = ("constant", "linear", "cosine")
FIELDS = ("schedule", "start", "end", "kimg")


@dataclass(frozen=True)
class Schedule:
    """One schedule: ``shape`` from ``start`` to ``end`` over ``kimg`` thousand images."""

    shape: str
    start: float
    end: float
    kimg: float

    @classmethod
    def of(cls, table: Mapping[str, Any]) -> Schedule:
        """The schedule a resolved recipe table describes (see :func:`resolve`)."""
        return cls(table["schedule"], table["start"], table["end"], table["kimg"])

    def at(self, kimg: float) -> float:
        """The value after ``kimg`` thousand images."""
        if self.shape == "constant" or kimg <= 0:
            return self.start
        t = min(kimg / self.kimg, 1.0)
        weight = t if self.shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * t))
        return self.start + weight * (self.end - self.start)


def is_schedule(value: Any) -> bool:
    """Whether a recipe value is a schedule table rather than a number."""
    return isinstance(value, Mapping) and "schedule" in value


def endpoints(value: Any) -> list[Any]:
    """The numbers a value takes at its extremes: itself, or a schedule's start and end."""
    return [value["start"], value["end"]] if is_schedule(value) else [value]


def initial(value: Any) -> Any:
    """A number as it is, a schedule's value at 0 images (what models and optimizers are
    built with: the schedule sets it before every step)."""
    if isinstance(value, list):
        return [initial(v) for v in value]
    return value["start"] if is_schedule(value) else value


def resolve(
    where: str,
    value: Mapping[str, Any],
    problems: list[tuple[str, str]],
    check: Callable[[Any], str | None] | None = None,
) -> dict[str, Any]:
    """Validate a schedule table; return it with every field filled (``end`` of a constant
    schedule is its ``start``; ``kimg`` 0). Problems are appended, naming ``where``."""
    before = len(problems)
    for name in value:
        if name not in FIELDS:
            problems.append((f"{where}.{name}", f"unknown schedule key; keys: {', '.join(FIELDS)}"))
    shape = value.get("schedule")
    if shape not in SHAPES:
        problems.append((f"{where}.schedule", f"must be one of {', '.join(map(repr, SHAPES))}"))
        return dict(value)
    numbers = {}
    for name in ("start", "end", "kimg"):
        number = value.get(name)
        if number is None:
            if name == "start" or shape != "constant":
                problems.append((f"{where}.{name}", f"a {shape} schedule needs it"))
            continue
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            problems.append((f"{where}.{name}", f"expected a number, got {number!r}"))
        elif not math.isfinite(number):
            problems.append((f"{where}.{name}", "must be a finite number"))
        else:
            numbers[name] = float(number)
    if shape == "constant" and "end" in numbers and numbers["end"] != numbers.get("start"):
        problems.append((f"{where}.end", "a constant schedule has no end value: drop it"))
    if shape != "constant" and numbers.get("kimg", 1.0) <= 0:
        problems.append((f"{where}.kimg", "must be > 0 (the horizon, in thousands of images)"))
    if len(problems) > before:
        return dict(value)
    start = numbers["start"]
    resolved = {
        "schedule": shape,
        "start": start,
        "end": numbers.get("end", start),
        "kimg": numbers.get("kimg", 0.0),
    }
    for name in ("start", "end"):
        message = check(resolved[name]) if check else None
        if message:
            problems.append((f"{where}.{name}", f"{message}, got {resolved[name]!r}"))
    return resolved


def scheduled(tables: Mapping[str, Any], prefix: str = "") -> dict[str, Schedule]:
    """Every schedule in resolved recipe tables, by dotted key (list items by index:
    ``optim.generator.betas.1``)."""
    found: dict[str, Schedule] = {}
    items = tables.items() if isinstance(tables, Mapping) else enumerate(tables)
    for key, value in items:
        dotted = f"{prefix}{key}"
        if is_schedule(value):
            found[dotted] = Schedule.of(value)
        elif isinstance(value, (Mapping, list)):
            found.update(scheduled(value, f"{dotted}."))
    return found


class Schedules:
    """Sets every scheduled value of a run before each step, and reports them for the log.

    Built once a run's parts and execution exist. ``optim.*.lr_decay`` (the older linear
    decay over steps, :func:`lr_factor`) is applied here too. With neither, :meth:`apply`
    does nothing: the optimizers keep the recipe's values, and a resume cannot change them.
    """

    def __init__(self, recipe, parts, execution, images_per_step: int):
        self.execution, self.images_per_step = execution, images_per_step
        self.found = scheduled(recipe.tables)
        regularizers = {name: instance for name, _, instance in parts.regularizers}
        self._setters = [
            (schedule, self._setter(dotted, parts, regularizers))
            for dotted, schedule in self.found.items()
        ]
        self._decays = [
            (role, config)
            for role, config in recipe.section("optim").items()
            if config["lr_decay"] != "none"
        ]

    def _setter(self, dotted: str, parts, regularizers) -> Callable[[float], None]:
        section, _, rest = dotted.partition(".")
        if section == "optim":
            role, _, key = rest.partition(".")
            if key == "lr":
                return lambda v: _set_group(self.execution, role, "lr", v)
            index = int(key.rpartition(".")[2])  # betas.I
            return lambda v: _set_beta(self.execution, role, index, v)
        if section == "ema":
            ema = parts.ema
            if rest == "decay":
                return lambda v: setattr(ema, "decay", v)
            return lambda v: setattr(ema, "half_life", v * 1000)
        if section == "augment":
            return parts.augmenter.p.fill_
        if section == "loss":  # loss.adversarial_weight: the adversarial term's weight in G
            return lambda v: setattr(parts.adversarial, "weight", v)
        if section == "critics":  # critics.CRITIC.regularizers.NAME.OPTION
            critic, _, rest = rest.partition(".")
            name, _, option = rest.partition(".")[2].partition(".")
            key = f"critics.{critic}.{name}"
            return _option_setter(regularizers[key], key, option)
        name, _, option = rest.partition(".")
        return _option_setter(regularizers[name], name, option)

    def kimg(self, step: int) -> float:
        """Thousands of images seen before step ``step`` (0-based)."""
        return step * self.images_per_step / 1000

    def apply(self, step: int) -> None:
        """Set every scheduled value for step ``step``."""
        kimg = self.kimg(step)
        for schedule, setter in self._setters:
            setter(schedule.at(kimg))
        for role, config in self._decays:
            _set_group(self.execution, role, "lr", config["lr"] * lr_factor(step, config))

    def values(self, step: int) -> dict[str, float]:
        """``schedule/<key>``: each schedule's value at step ``step``, for the log."""
        kimg = self.kimg(step)
        return {f"schedule/{key}": s.at(kimg) for key, s in self.found.items()}


def lr_factor(step: int, config: dict) -> float:
    """The multiplier on ``lr`` at ``step`` (0-based G update index).

    ``lr_decay = "linear"``: 1 until ``lr_decay_start``, then linearly to 0 at
    ``lr_decay_steps`` (SNGAN / WGAN-GP decay over their own horizon, not ``train.steps``).
    """
    if config["lr_decay"] == "none":
        return 1.0
    start, end = config["lr_decay_start"], config["lr_decay_steps"]
    return min(1.0, max(0.0, 1.0 - (step - start) / (end - start)))


def _option_setter(instance: Any, name: str, option: str) -> Callable[[float], None]:
    """A setter of a regularizer's option, checked once: the option must be a number
    attribute, or a schedule cannot reach it."""
    current = getattr(instance, option, None)
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        from ganforge.errors import RecipeError

        raise RecipeError(
            [
                (
                    f"{_where(name)}.{option}",
                    f"{type(instance).__name__} keeps no number attribute {option!r}, so it "
                    "cannot follow a schedule",
                )
            ]
        )
    return lambda v: setattr(instance, option, v)


def _where(key: str) -> str:
    """The recipe table of regularizer ``key`` (``critics.CRITIC.NAME`` is a critic's own)."""
    if key.startswith("critics."):
        _, critic, name = key.split(".", 2)
        return f"critics.{critic}.regularizers.{name}"
    return f"regularizers.{key}"


def _set_group(execution, role: str, key: str, value: float) -> None:
    for group in execution.param_groups(role):
        # A critic with its own lr keeps its ratio to the base lr (critics.parameter_groups).
        group[key] = value * group["lr_ratio"] if "lr_ratio" in group else value


def _set_beta(execution, role: str, index: int, value: float) -> None:
    for group in execution.param_groups(role):
        if group.get("own_betas"):  # a critic's own betas: fixed
            continue
        betas = list(group["betas"])
        betas[index] = value
        group["betas"] = tuple(betas)
