"""Building a run's parts from a validated recipe: data, clusters, G, D, loss, regularizers,
augmentation and the EMA.

:func:`build_parts` is the one place a recipe becomes objects. Every component comes from the
registry (``Registry.build``: one error rule for all), on the accelerator's device, with
identical initial weights on every process. What it returns, :class:`Parts`, is what the
training step, the state (checkpoints) and the outputs (samples, evaluation, export) share;
what the run trains is built nowhere else (the execution then builds the optimizers, and the
evaluation its extractor and metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ganforge import paired
from ganforge.augment import Augmentation, Augmenter
from ganforge.averaging import EMA
from ganforge.checkpoint import Checkpoint, warn
from ganforge.clusters import cluster_labels, cluster_names, label_prior
from ganforge.components import Input, Loss, Regularizer, as_critic_output, eval_mode
from ganforge.critics import FIRST, CriticSet, CriticTerms
from ganforge.data import DataSource, ImageData, open_store, to_model_range
from ganforge.distributed import main_decides
from ganforge.errors import DataError, RecipeError
from ganforge.recipe import Component, Recipe, takes_input
from ganforge.registry import INPUT_ARGS, Registry
from ganforge.schedules import initial
from ganforge.schema import CRITIC_KEYS, CRITIC_TABLES
from ganforge.streams import stream_seed


@dataclass
class Adversarial:
    """How G's adversarial term enters its loss (``[loss] adversarial_weight, critic_start,
    adaptive_weight``); ``weight`` may follow a schedule (set before every step)."""

    weight: float = 1.0
    start: int = 0
    adaptive: bool = False
    adaptive_max: float = 1e4
    # adversarial_weight = 0 (not scheduled): no adversarial term, and no critic work at all (a
    # reconstruction-only baseline with the same recipe)
    off: bool = False

    def active(self, step: int) -> bool:
        """Whether the critic trains and the adversarial term counts at ``step``."""
        return not self.off and step >= self.start

    @classmethod
    def of(cls, loss: dict) -> Adversarial:
        weight = loss["adversarial_weight"]
        return cls(
            initial(weight),
            loss["critic_start"],
            loss["adaptive_weight"],
            loss["adaptive_max"],
            off=weight == 0,
        )


@dataclass
class Parts:
    """What a run trains, as :func:`build_parts` made it.

    ``generator`` and ``discriminator`` are plain modules until the execution wraps them;
    the trainer then puts the modules as the backend holds them here (sharded under ZeRO-3 and
    FSDP2), so checkpoints and the EMA read them through the execution.
    """

    source: DataSource  # the data plugin's description of the data set
    loaded: ImageData  # its store as the source gives it: the data's own labels, or none
    data: ImageData  # what training draws: under data.clusters, clusters as the labels
    num_classes: int  # classes G and D condition on (0: unconditional)
    label_prior: list[float] | None  # each cluster's share of the data (data.clusters)
    g_spec: Component  # the generator's registry name and options (for the export)
    generator: nn.Module
    discriminator: nn.Module
    loss: Loss
    regularizers: list[tuple[str, int, Regularizer]]  # (name, every, regularizer)
    augmenter: Augmenter | None
    ema: EMA | None
    memory_format: torch.memory_format | None  # channels_last, or None
    # [input]: what G is given for each sample, derived from the batch (None: G(z, y)), the
    # input's (channels, resolution), and whether the critic is conditioned on it.
    input: Input | None = None
    input_shape: tuple[int, int] | None = None
    critic_takes_input: bool = False
    adversarial: Adversarial = field(default_factory=Adversarial)
    # How each critic's outputs enter the losses, in the order D returns them: one entry (the
    # [discriminator], whose loss is `loss`) unless the recipe has [critics.NAME] tables, and
    # then D is a critics.CriticSet.
    critics: list[CriticTerms] = field(default_factory=list)
    # A whole copy of G (decay 0) where the backend shards G and no EMA is kept: samples and
    # the export need the whole generator on one process. Set by the trainer.
    mirror: EMA | None = None

    def state_modules(self) -> dict[str, nn.Module]:
        """Every module whose parameters and buffers are training state, by checkpoint prefix:
        G, D, the EMA generator, and each regularizer that keeps state (an ``nn.Module``)."""
        found = {"generator": self.generator, "discriminator": self.discriminator}
        if self.ema is not None:
            found["ema"] = self.ema.module
        for name, _, regularizer in self.regularizers:
            if isinstance(regularizer, nn.Module):
                found[f"regularizers.{name}"] = regularizer
        return found

    @property
    def sampling_generator(self) -> nn.Module:
        """What samples and the export come from: the EMA generator when enabled, else G (its
        whole copy where the backend shards G)."""
        for average in (self.ema, self.mirror):
            if average is not None:
                return average.module
        return self.generator


def build_parts(
    recipe: Recipe, registry: Registry, accelerator, weights_from: Checkpoint | None
) -> Parts:
    """Everything the recipe trains, on ``accelerator.device``. ``weights_from`` is the
    checkpoint the run continues (``train.resume``) or starts from (``train.init_from``): a
    clustered run continues on its checkpoint's clusters. Collective under ``data.clusters``
    (the main process clusters)."""
    data_cfg, device = recipe.section("data"), accelerator.device
    source, loaded = open_data(recipe, registry)
    data, prior = loaded, None
    if data_cfg["clusters"]:
        data, prior = _condition_on_clusters(
            loaded, data_cfg["clusters"], recipe, accelerator, weights_from
        )
    num_classes = _check_data(data, recipe, accelerator)

    core = {"resolution": data.resolution, "channels": data.channels, "num_classes": num_classes}
    build = _builder(recipe, registry)
    torch.manual_seed(stream_seed("weights", recipe.get("run.seed")))
    g_spec, d_spec = recipe.component("generator"), recipe.component("discriminator")
    derive, input_shape, d_core = _input(recipe, build, data), None, core
    if derive is not None:
        input_shape = _input_shape(derive, data, recipe)
        given = {"input_channels": input_shape[0], "input_resolution": input_shape[1]}
        core = {**core, **given}
        if takes_input(registry.get("discriminator", d_spec.name)):
            d_core = core
    generator = build("generator", g_spec.name, core, g_spec.kwargs, nn.Module)
    discriminator = build("discriminator", d_spec.name, d_core, d_spec.kwargs, nn.Module)
    loss_spec = recipe.component("loss")
    loss = build("loss", loss_spec.name, {}, loss_spec.kwargs, Loss)
    # The [discriminator] and each [critics.NAME]: (critic, registry name, its terms).
    critics = [(discriminator, d_spec.name, CriticTerms(FIRST, 1.0, loss, loss_spec.name))]
    for name, table in recipe.critics():
        critics.append(_further_critic(name, table, registry, build, core, loss_spec))
    critic_takes_input = derive is not None and any(
        getattr(critic, "takes_input", False) for critic, _, _ in critics
    )
    if critic_takes_input and recipe.get("augment.name"):
        problem = (
            f"discriminator {d_spec.name!r} is conditioned on the generator's input, which an "
            "augmentation of the images would no longer match: remove [augment]"
        )
        raise RecipeError([("augment.name", problem)], recipe.source)
    regularizers = [  # [regularizers.NAME] and every critic's own (critics.CRITIC.NAME)
        (key, every, build("regularizer", key.rpartition(".")[2], {}, kwargs, Regularizer))
        for key, every, kwargs in recipe.regularizers()
    ]
    for _, _, regularizer in regularizers:
        if isinstance(regularizer, nn.Module):  # its state (buffers) lives beside the models
            regularizer.to(device)
    augmenter = _augmenter(recipe, build, device)
    memory_format = _memory_format(recipe, accelerator)
    generator = generator.to(device)
    for critic, name, terms in critics:
        critic.to(device)
        if memory_format is not None and data.is_image:
            critic.to(memory_format=memory_format)
        conditioned = derive is not None and getattr(critic, "takes_input", False)
        _check_class_head(
            terms.loss,
            terms.loss_name,
            critic,
            name,
            data,
            num_classes,
            recipe,
            device,
            derive if conditioned else None,
        )
    if memory_format is not None and data.is_image:
        generator.to(memory_format=memory_format)
    if len(critics) > 1:
        discriminator = CriticSet({terms.name: critic for critic, _, terms in critics})
    for model in (generator, discriminator):
        keep_frozen_in_eval(model)
    ema_cfg = recipe.section("ema")
    ema = None
    if ema_cfg["decay"] or ema_cfg["half_life_kimg"]:
        train = recipe.section("train")
        ema = EMA(
            generator,
            initial(ema_cfg["decay"]),  # a schedule sets both before every step
            ema_cfg["warmup_steps"],
            half_life_images=initial(ema_cfg["half_life_kimg"]) * 1000,
            rampup=ema_cfg["rampup"],
            images_per_step=train["batch_size"] * train["n_critic"],
        )
    return Parts(
        source=source,
        loaded=loaded,
        data=data,
        num_classes=num_classes,
        label_prior=prior,
        g_spec=g_spec,
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        regularizers=regularizers,
        augmenter=augmenter,
        ema=ema,
        memory_format=memory_format,
        input=derive,
        input_shape=input_shape,
        critic_takes_input=critic_takes_input,
        adversarial=Adversarial.of(recipe.section("loss")),
        critics=[terms for _, _, terms in critics],
    )


def _further_critic(name: str, table: dict, registry: Registry, build, core: dict, loss):
    """A ``[critics.NAME]`` critic: its discriminator (given the input's shape when its
    factory takes it), and its terms: its weight and its loss (the recipe's ``[loss]`` unless
    its table names one)."""
    kwargs = {k: v for k, v in table.items() if k not in (*CRITIC_KEYS, *CRITIC_TABLES)}
    if not takes_input(registry.get("discriminator", table["name"])):
        core = {k: v for k, v in core.items() if k not in INPUT_ARGS}
    critic = build("discriminator", table["name"], core, kwargs, nn.Module)
    spec = loss
    if table["loss"]:
        options = {k: v for k, v in table["loss"].items() if k != "name"}
        spec = Component(table["loss"]["name"], options)
    built = build("loss", spec.name, {}, spec.kwargs, Loss)
    return critic, table["name"], CriticTerms(name, table["weight"], built, spec.name)


def frozen_submodules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules of ``model`` whose parameters all have ``requires_grad``
    False (a pretrained encoder inside G, a fixed feature network inside D)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Frozen submodules (:func:`frozen_submodules`) run in eval mode at every call, whatever
    mode the model is put in (their batch-norm statistics and dropout stay as loaded); the
    optimizers leave them out (they step parameters that require grad)."""
    for module in frozen_submodules(model):
        module.register_forward_pre_hook(_stay_in_eval)


def _stay_in_eval(module: nn.Module, args) -> None:
    if module.training:
        module.eval()


def _builder(recipe: Recipe, registry: Registry):
    """``build(kind, name, core, kwargs, expected)``: the registry's, with the recipe file
    named in its errors."""

    def build(kind, name, core, kwargs, expected):
        return registry.build(kind, name, core, kwargs, expected, source=recipe.source)

    return build


def data_source(recipe: Recipe, registry: Registry) -> DataSource:
    """The recipe's data source (its factory checks paths and options; nothing is decoded)."""
    spec, resolution = recipe.component("data"), recipe.get("data.resolution")
    core = {"resolution": resolution}
    return registry.build("dataset", spec.name, core, spec.kwargs, DataSource, source=recipe.source)


def open_data(recipe: Recipe, registry: Registry) -> tuple[DataSource, ImageData]:
    """The recipe's data source and its decoded store (cached by fingerprint)."""
    source = data_source(recipe, registry)
    return source, open_store(source, recipe.get("data.resolution"))


def _condition_on_clusters(
    data: ImageData, k: int, recipe: Recipe, accelerator, weights_from: Checkpoint | None
) -> tuple[ImageData, list[float]]:
    """Self-conditioning: k-means clusters of the data take the labels' place (the
    checkpoint's on a resume or init_from), and sampling draws them with their share of the
    data (the label prior)."""
    labels = saved_clusters(weights_from, k, len(data))
    origin = ", as the checkpoint has them"
    if labels is None:
        origin = ""
        # The main process clusters, the others receive (k-means on another machine's CPU
        # could split a tie differently).
        labels = main_decides(
            accelerator,
            lambda: torch.from_numpy(cluster_labels(data, k, recipe.get("run.seed"))),
            "data.clusters: the main process could not cluster the data",
            like=torch.full((len(data),), -1, dtype=torch.int64),
            error=DataError,
        ).numpy()
    sizes = np.bincount(labels, minlength=k)
    accelerator.print(
        f"ganforge: conditioning on {k} k-means clusters of the data "
        f"({sizes.min()}-{sizes.max()} samples each{origin})"
    )
    if sizes.min() < 2:
        accelerator.print(
            f"ganforge: warning: {int((sizes < 2).sum())} of the {k} clusters hold one sample "
            f"or none: data.clusters = {k} is too many for {len(data)} samples (try "
            f"{max(2, len(data) // 50)} or fewer)"
        )
    return replace(data, labels=labels, class_names=cluster_names(k)), label_prior(labels, k)


def _check_data(data: ImageData, recipe: Recipe, accelerator) -> int:
    """The classes G and D condition on (0: unconditional), after checking the data fits the
    recipe: data.conditional needs labels, data.xflip images; tiny data (fewer samples than a
    batch) trains, with a word on what to change."""
    data_cfg = recipe.section("data")
    conditioned = data_cfg["conditional"] or data_cfg["clusters"] > 0
    num_classes = data.num_classes if conditioned else 0
    if data_cfg["conditional"] and num_classes < 2:
        raise DataError(f"data.conditional = true, but data {data_cfg['name']!r} has no labels")
    if recipe.get("data.xflip") and not data.is_image:
        problem = "point data has no left and right to mirror: remove data.xflip"
        raise RecipeError([("data.xflip", problem)], recipe.source)
    batch = recipe.get("train.batch_size")
    if len(data) < batch:
        accelerator.print(
            f"ganforge: warning: the data has {len(data)} samples, fewer than one batch "
            f"(train.batch_size = {batch}): every batch repeats samples. A batch of at most "
            f"{len(data)}{' (and data.xflip = true)' if data.is_image else ''} suits it better"
        )
    return num_classes


def saved_clusters(checkpoint: Checkpoint | None, k: int, size: int) -> np.ndarray | None:
    """The clusters a run on ``data.clusters = k`` trained on, from its checkpoint, when they
    fit this data: a resume (or ``init_from``) continues on them, where k-means run again
    (another CPU, another scikit-learn) could number or split them differently."""
    if checkpoint is None or "data.safetensors" not in checkpoint.state.get("files", {}):
        return None
    if checkpoint.state["recipe"].get("data", {}).get("clusters") != k:
        return None
    labels = checkpoint.tensors("data")["cluster_labels"]
    if len(labels) != size:
        warn(f"the data changed size since {checkpoint.path}: its clusters are computed again")
        return None
    return labels.numpy()


def _input(recipe: Recipe, build, data: ImageData) -> Input | None:
    """The recipe's ``[input]`` (None without one), checked against the data: images only."""
    if not recipe.get("input.name"):
        if data.paired:
            problem = (
                "the data holds pairs: name the generator's input made from each stored "
                'input in [input] (name = "identity" takes it as it is)'
            )
            raise RecipeError([("input.name", problem)], recipe.source)
        return None
    if not data.is_image:
        problem = "derives the generator's input from images; the data holds points"
        raise RecipeError([("input.name", problem)], recipe.source)
    spec = recipe.component("input")
    return build("input", spec.name, {}, spec.kwargs, Input)


def _input_shape(derive: Input, data: ImageData, recipe: Recipe) -> tuple[int, int]:
    """``(channels, resolution)`` of the input ``derive`` makes of the data's images."""
    stored = data.stored_channels or data.channels  # paired data: made from its stored input
    try:
        channels, resolution = (int(v) for v in derive.shape(stored, data.resolution))
    except ValueError as err:  # an input that does not fit the data (a factor, a size)
        problem = f"input {recipe.get('input.name')!r} does not fit the data: {err}"
        raise RecipeError([("input", problem)], recipe.source) from None
    return channels, resolution


def _augmenter(recipe: Recipe, build, device: torch.device) -> Augmenter | None:
    settings = recipe.section("augment")
    if not settings["name"]:
        return None
    spec = recipe.component("augment")
    return Augmenter(
        build("augmentation", spec.name, {}, spec.kwargs, Augmentation),
        p=initial(settings["p"]),
        adaptive=settings["adaptive"],
        target=settings["target"],
        interval=settings["interval"],
        speed_images=settings["speed_images"],
        batch_size=recipe.get("train.batch_size"),
        device=device,
    )


def _memory_format(recipe: Recipe, accelerator) -> torch.memory_format | None:
    if not recipe.get("train.channels_last"):
        return None
    # Under bf16 on a CPU, channels_last was 1.09x faster (AMD EPYC): no warning there.
    if accelerator.device.type == "cpu" and accelerator.mixed_precision != "bf16":
        accelerator.print(
            "ganforge: warning: train.channels_last = true on a CPU without bf16: one "
            "Intel CPU ran the quickstart about 5x slower that way, an AMD EPYC at the "
            "same speed (docs/performance.md); measure before keeping it"
        )
    return torch.channels_last


@torch.no_grad()
def _check_class_head(
    loss: Loss,
    loss_name: str,
    discriminator: nn.Module,
    d_name: str,
    data: ImageData,
    num_classes: int,
    recipe: Recipe,
    device: torch.device,
    derive: Input | None = None,
) -> None:
    """The critic has a class head exactly when the loss trains one, checked on two real
    images before training (eval mode: no statistics or power iterations move); ``derive``:
    the input a critic conditioned on it is given."""
    uses = bool(getattr(loss, "uses_class_logits", False))
    images = to_model_range(torch.from_numpy(np.array(data.images[:2]))).to(device)
    x = paired.split(images, data)[0]  # paired data: the targets
    source = paired.derive_pair(derive, images, data, 0)[0] if derive else None
    y = torch.from_numpy(np.array(data.labels[:2])).to(device) if num_classes else None
    extra = {} if derive is None else {"source": source}  # made under its own RNG
    with eval_mode(discriminator) as critic:
        has = as_critic_output(critic(x, y, **extra)).class_logits is not None
    if uses and not has:
        problem = (
            f"loss {loss_name!r} trains the critic's class head, but discriminator "
            f'{d_name!r} returned none: set discriminator.condition = "auxiliary"'
        )
        raise RecipeError([("discriminator", problem)], recipe.source)
    if has and not uses:
        problem = (
            f"discriminator {d_name!r} has a class head that loss {loss_name!r} does not "
            'train: use loss.name = "acgan", or drop discriminator.condition = '
            '"auxiliary" (an untrained head\'s parameters also stop multi-process runs)'
        )
        raise RecipeError([("discriminator", problem)], recipe.source)
