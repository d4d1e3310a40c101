"""Every hook a ganforge plugin can implement: the plugin author's full reference.

A plugin is a module (or object) registered under the ``ganforge`` entry-point group::

    # pyproject.toml of ganforge-something
    [project.entry-points.ganforge]
    something = "ganforge_something.plugin"

    # ganforge_something/plugin.py
    from ganforge import hookimpl

    @hookimpl
    def ganforge_register_losses(register):
        register("my_loss", MyLoss)

Registration hooks are called once when the registry is built; each receives a
:class:`ganforge.registry.Register` bound to one component kind. ``register(name, factory)``
adds an entry; recipes then name it (``[loss] name = "my_loss"``) and the core calls
``factory(**core_args, **recipe_kwargs)``. The factory's signature is the schema of its recipe
table: its keyword arguments are validated against the recipe before anything runs.

Lifecycle hooks observe a run. They are called on the main process only, outside the training
step, and must not change training state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ganforge.recipe import Recipe
    from ganforge.registry import RecipeRegister, Register

hookspec = pluggy.HookspecMarker("ganforge")


@dataclass(frozen=True)
class RunInfo:
    """What lifecycle hooks learn about a run (``run`` in every lifecycle hook)."""

    recipe: Recipe  # the resolved, validated recipe
    run_dir: Path
    num_processes: int
    per_process_batch: int  # train.batch_size / num_processes
    start_step: int  # non-zero when the run resumed
    steps: int  # train.steps: the last step
    channels: int
    resolution: int
    num_classes: int  # 0 when unconditional


@hookspec
def ganforge_register_generators(register: Register) -> None:
    """Register generator factories.

    ``factory(*, resolution: int, channels: int, num_classes: int, **kwargs) -> nn.Module``.
    The module is called as ``G(z, y=None)`` and returns images in [-1, 1] shaped
    ``(B, channels, resolution, resolution)``. It declares ``latent_shape: tuple[int, ...]``
    (without the batch dimension) and ``latent_prior: str`` (``"normal"`` or ``"uniform"``),
    and may declare ``supports_truncation = True`` to accept ``truncation=ψ``.

    A generator that takes an input (``[input]`` in the recipe: super-resolution,
    image-to-image, autoencoders) also accepts ``input_channels`` and ``input_resolution``
    and is called as ``G(z, y, source=...)``; one that needs no noise declares
    ``latent_shape = (0,)``. For ``[loss] adaptive_weight`` (VQGAN's) it names its last
    layer's weight as ``last_layer`` (a parameter).
    ``num_classes`` is 0 for unconditional runs (the classes, or ``data.clusters``, otherwise);
    pass ``conditional=True`` to ``register`` for a generator that uses ``y``.
    """


@hookspec
def ganforge_register_discriminators(register: Register) -> None:
    """Register discriminator (critic) factories.

    ``factory(*, resolution: int, channels: int, num_classes: int, **kwargs) -> nn.Module``.
    The module is called as ``D(x, y=None)`` and returns logits shaped ``(B,)`` or ``(B, 1)``,
    or a :class:`ganforge.components.CriticOutput` carrying the logits and optional extras
    (class logits, penultimate features). Pass ``conditional=True`` to ``register`` for a
    discriminator that uses ``y``.
    """


@hookspec
def ganforge_register_losses(register: Register) -> None:
    """Register adversarial losses.

    ``factory(**kwargs)`` returns a :class:`ganforge.components.Loss`: pure functions of critic
    outputs and labels, ``d_loss(real, fake, y_real, y_fake)`` and
    ``g_loss(fake, real, y_real, y_fake)`` returning scalar tensors. A loss whose G term needs
    the critic's outputs on real images sets ``needs_real_for_g = True``; otherwise ``real`` is
    ``None`` in ``g_loss`` and the core skips that critic pass. A loss that trains the critic's
    class head (``CriticOutput.class_logits``, as ``acgan`` does) sets
    ``uses_class_logits = True``: before training, the core then checks that the critic has
    that head, and that a critic with one is trained by a loss that uses it (an untrained head's
    parameters would stop a multi-process run). ``register(..., conditional=True)`` declares a
    loss that needs class labels, which the recipe check then requires
    (``data.conditional = true``, or cluster indices with ``data.clusters``).
    """


@hookspec
def ganforge_register_regularizers(register: Register) -> None:
    """Register regularizers, used as ``[regularizers.NAME]`` tables (several per recipe).

    ``factory(**kwargs)`` returns a :class:`ganforge.components.Regularizer`: it declares its
    ``phase`` (``"d"`` or ``"g"``) and is called with a
    :class:`ganforge.components.RegularizerContext`, returning ``(term, logs)`` where ``term`` is
    a scalar tensor added to that phase's loss and ``logs`` a dict of scalar tensors. The recipe
    key ``every`` (handled by the core) applies it lazily every k steps with the term scaled by k.
    Penalties on input gradients should run their critic pass with autocast off, in float32.
    A regularizer with state of its own (a running mean) is an ``nn.Module`` keeping that
    state in buffers: the core moves it to the device, saves its ``state_dict()`` in every
    checkpoint (as ``regularizers.NAME.*``), restores it on resume, and gives every process
    the main process's buffers before each checkpoint, as it does for the models' buffers.
    Draw randomness from the global torch RNG of the device, which checkpoints save.
    """


@hookspec
def ganforge_register_datasets(register: Register) -> None:
    """Register data sources, used as ``[data] name = ...``.

    ``factory(*, resolution: int, **kwargs) -> ganforge.data.DataSource``. The source's
    ``load()`` returns uint8 images N×C×H×W at exactly ``resolution``, optional integer labels
    and class names; its ``fingerprint`` names the decoded result so the core can cache it.
    """


@hookspec
def ganforge_register_feature_extractors(register: Register) -> None:
    """Register feature extractors for evaluation, chosen as ``[eval] extractor = ...``.

    ``factory(**kwargs)`` returns a :class:`ganforge.evaluation.FeatureExtractor`: an
    ``nn.Module`` called on samples (images in [-1, 1], B×C×H×W at any resolution and 1 or 3
    channels, or B×D points) returning ``(features, logits)``: B×F features and B×K class
    logits, or ``None`` when it has no classifier head. It declares ``fingerprint`` (changes
    whenever its outputs would: weights, preprocessing), which keys the cache of real-data
    features, and ``num_classes`` (K, 0 without logits).
    """


@hookspec
def ganforge_register_metrics(register: Register) -> None:
    """Register evaluation metrics, used as ``[eval.metrics.NAME]`` tables and ``--metric NAME``.

    ``factory(**kwargs)`` returns a :class:`ganforge.evaluation.Metric`: called as
    ``metric(real, fake, context)`` with two :class:`ganforge.evaluation.Features` (features,
    logits, labels and, for point data, the samples themselves) and an
    :class:`ganforge.evaluation.EvalContext`; returns a dict of floats (names without the
    metric's prefix, e.g. ``{"": 12.3}`` or ``{"precision": 0.7, "recall": 0.6}``).
    """


@hookspec
def ganforge_register_augmentations(register: Register) -> None:
    """Register augmentations of what the critic sees, chosen as ``[augment] name = ...``.

    ``factory(**kwargs)`` returns a :class:`ganforge.augment.Augmentation`: called as
    ``augment(x, p)`` on images B×C×H×W in [-1, 1] with ``p`` a 0-d tensor on their device,
    it returns the augmented images, differentiably (G's gradients pass through it), applying
    each transform to each image with probability ``p``. Draw randomness from the global torch
    RNG of ``x``'s device, which checkpoints save. The core applies it inside ``critic(x, y)``
    to reals and fakes alike and owns ``p`` (fixed, or adapted as in ADA).
    """


@hookspec
def ganforge_register_inputs(register: Register) -> None:
    """Register generator inputs, chosen as ``[input] name = ...``: what an input-taking
    generator (super-resolution, image-to-image, an autoencoder) is given for each sample.

    ``factory(**kwargs)`` returns a :class:`ganforge.components.Input`: called on a batch of
    training images (B×C×H×W in [-1, 1], on their device, no gradient) it returns the
    generator's input for each, e.g. a downscaled or masked copy; ``shape(channels,
    resolution)`` gives that input's ``(channels, resolution)``. Draw any randomness from the
    global torch RNG of the images' device, which checkpoints save.

    With an ``[input]``, the core passes ``input_channels`` and ``input_resolution`` to the
    generator's factory (which must accept them) and calls ``G(z, y, source=...)``; a
    discriminator whose factory accepts them too, and whose module sets
    ``takes_input = True``, is called as ``D(x, y, source=...)`` (conditioned on the input,
    as pix2pix's critic is). Exports record the input, so ``ganforge generate --input``
    and ``ganforge eval`` need nothing else.
    """


@hookspec
def ganforge_register_recipes(register: RecipeRegister) -> None:
    """Register recipe files the plugin ships, run by name as ``ganforge PLUGIN:NAME``.

    ``register(name, path)`` with ``path`` a TOML file inside the plugin's package, e.g.
    ``Path(__file__).parent / "recipes" / "digits.toml"``; ``PLUGIN`` is the plugin's
    entry-point name, so names never collide across plugins. ``ganforge train``,
    ``validate`` and ``python -m ganforge`` accept the name wherever they accept a recipe path
    (overrides apply as usual); ``ganforge plugins`` lists it. A missing file is an error
    naming the plugin when the registry is built.
    """


@hookspec
def ganforge_run_start(run: RunInfo) -> None:
    """Called once before the first step, after models, optimizers and data are ready.

    ``run`` describes the run: resolved recipe, run directory, number of processes, the
    effective per-process batch, the first step (non-zero when resuming) and the last.
    """


@hookspec
def ganforge_log(run: RunInfo, step: int, values: dict[str, Any]) -> None:
    """Called every ``train.log_every`` steps of ``run`` with the logged values (plain floats).

    ``values`` holds the losses, mean critic outputs on real and fake images, gradient norms,
    skipped steps, images/s and each regularizer's logs; it is also the line written to
    ``RUN_DIR/metrics.jsonl``.
    """


@hookspec
def ganforge_checkpoint(run: RunInfo, step: int, path: str) -> None:
    """Called after each checkpoint of ``run`` is complete on disk, at ``step``.

    ``path`` is the checkpoint folder (``RUN_DIR/checkpoints/step_NNNNNN``): its files are final
    (copy or upload them from here), though older checkpoints beyond ``train.keep_checkpoints``
    are removed as new ones are written. Called every ``train.checkpoint_every`` steps and at
    the end of training, on the main process.
    """


@hookspec
def ganforge_run_end(run: RunInfo, step: int, export_path: str | None) -> None:
    """Called once after the last ``step`` of ``run``, after the final samples and the export.

    ``export_path`` is the written ``generator.safetensors`` (None on other processes).
    """
