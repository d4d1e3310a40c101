"""The training loop: n_critic D updates on fresh reals, then one G update with D frozen.

This module owns the critic call, the step and the loop, and nothing else. The run is built by
``builder.py`` (data, models, loss, regularizers, augmentation, EMA), executed by
``execution/`` (backward, the non-finite check, clipping, the optimizer step under DDP, ZeRO or
FSDP2), recorded by ``outputs.py`` (samples, evaluation, export, logs) and checkpointed by
``state.py``. See docs/architecture.md for the layers and the contracts they keep.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ganforge import state, tracking
from ganforge.averaging import EMA
from ganforge.builder import Parts, build_parts
from ganforge.components import (
    CriticOutput,
    CriticPass,
    RegularizerContext,
    as_critic_output,
    sample_latents,
)
from ganforge.critics import CriticSet, parameter_groups
from ganforge.data import BatchSource
from ganforge.diagnostics import Watch
from ganforge.distributed import (
    BF16_IF_NATIVE,
    make_accelerator,
    per_process_batch,
    plan_launch,
    resolve_precision,
)
from ganforge.errors import GanforgeError, RecipeError
from ganforge.execution import configure_device, make_execution
from ganforge.hookspecs import RunInfo
from ganforge.outputs import RunOutputs
from ganforge.paired import split
from ganforge.plugins import Plugins
from ganforge.recipe import Recipe
from ganforge.runfiles import read_metrics as read_metrics  # re-exported: its old home
from ganforge.runlock import RunDirectory
from ganforge.schedules import Schedules
from ganforge.state import Progress
from ganforge.stopping import (
    PLUGIN_FAILED,
    LifecycleHooks,
    StopSignals,
    StopVote,
    interrupted,
    local_reason,
    too_many_skipped,
)
from ganforge.updates import Phase, build_optimizer

__all__ = ["Phase", "RunInfo", "Trainer", "read_metrics"]  # Phase and RunInfo: their old home
PER_CRITIC = ("d_loss/", "g_loss/")  # log keys of each critic's term


def _member(critics, k: int, x, y, *, float32: bool = False) -> CriticOutput:
    """Critic ``k``'s output of ``critics(x, y)`` (every critic runs: D is one module)."""
    return critics(x, y, float32=float32)[k]


class Trainer:
    """Builds a run from a validated recipe and trains it.

    What it holds: ``parts`` (what the recipe built: ``builder.Parts``), ``execution`` (the
    backend holding the models and optimizers), ``progress`` (step, sampler, latent stream,
    skip counters: ``state.Progress``) and ``outputs`` (samples, evaluation, export:
    ``outputs.RunOutputs``). ``G`` and ``D`` are the models as the step calls them.
    """

    def __init__(self, recipe: Recipe, plugins: Plugins, accelerator=None):
        self.recipe, self.plugins = recipe, plugins
        run, train = recipe.section("run"), recipe.section("train")
        precision = resolve_precision(run["mixed_precision"])
        self.launch = plan_launch(
            recipe.section("distributed"),
            train["grad_clip"],
            precision,
            regularizers=bool(recipe.regularizers()),
        )
        self.acc = accelerator or make_accelerator(
            precision,
            run["log_with"],
            recipe.run_dir,
            timeout=recipe.get("distributed.timeout"),
        )
        configure_device(self.acc, train["tf32"], train["cudnn_benchmark"])
        if run["mixed_precision"] == BF16_IF_NATIVE:
            chosen = "bf16" if precision == "bf16" else "float32 (bf16 would be emulated here)"
            self.acc.print(f'ganforge: run.mixed_precision = "{BF16_IF_NATIVE}": {chosen}')
        self.steps, self.n_critic = train["steps"], train["n_critic"]
        self.batch_size, self.optim = train["batch_size"], recipe.section("optim")
        per_process = per_process_batch(self.batch_size, self.acc, recipe.source)
        self.run_dir = recipe.run_dir
        # The run directory's lock comes first, before anything in the directory is read (a
        # run still holding it, an orphan, may be pruning checkpoints) and before any costly
        # work; building changes no other file, fit() does.
        self.directory = RunDirectory(self.run_dir)
        self.directory.lock_for(self.acc)
        try:
            self._build(recipe, plugins, per_process)
        except BaseException:
            self.directory.release()
            raise

    def _build(self, recipe: Recipe, plugins: Plugins, per_process: int) -> None:
        run = recipe.section("run")
        # What train.resume continues (or train.init_from starts from), found before anything
        # is built: a clustered run continues on its checkpoint's clusters, and its weights go
        # into the plain modules before any backend wraps or shards them. Every process then
        # states what it found, with the recipe and versions it runs, and they all stop unless
        # they agree (state.agree_on_start).
        self.targets = state.agree_on_start(recipe, plugins, self.launch, self.acc)
        self.parts: Parts = build_parts(recipe, plugins.registry, self.acc, self.targets.weights)
        state.load_weights(self.parts, self.targets, recipe, self.acc)
        self._prepare_execution()

        data, xflip = self.parts.data, recipe.get("data.xflip")
        samples = len(data) * (2 if xflip else 1)
        self.progress = Progress.start(samples, self.batch_size, run["seed"], self.acc)
        memory_format = self.parts.memory_format or torch.contiguous_format
        self.batches = BatchSource(
            data, self.progress.sampler, self.acc.device, memory_format, xflip
        )
        self.start_message = state.restore(
            self.parts, self.execution, self.progress, self.targets, run["seed"]
        )
        self.outputs = RunOutputs(self.parts, recipe, self.acc, plugins.registry)
        if recipe.get("eval.every"):
            self.outputs.prepare_evaluation()
        self.info = RunInfo(
            recipe=recipe,
            run_dir=self.run_dir,
            num_processes=self.acc.num_processes,
            per_process_batch=per_process,
            start_step=self.step,
            steps=self.steps,
            channels=data.channels,
            resolution=data.resolution,
            num_classes=self.parts.num_classes,
        )
        self.hooks = self.outputs.hooks = LifecycleHooks(plugins, self.info)

    def _prepare_execution(self) -> None:
        """The backend (one process or DDP, DeepSpeed ZeRO, FSDP2) wraps the models and builds
        their optimizers; the parts then hold the modules as the backend does."""
        parts = self.parts
        self.execution = make_execution(
            self.launch.backend,
            self.acc,
            self.recipe.get("train.grad_clip"),
            zero_stage=self.launch.zero_stage,
            batch_size=self.batch_size,
        )
        if parts.ema is None and self.execution.sharded:
            parts.mirror = EMA(parts.generator, 0.0)
        self.G, self.D = self.execution.prepare(
            parts.generator, parts.discriminator, self._make_optimizer
        )
        parts.generator = self.execution.modules["generator"]
        parts.discriminator = self.execution.modules["discriminator"]
        # D's trained parameters (frozen submodules stay frozen in the G phase's unfreezing).
        self._critic_params = [p for p in parts.discriminator.parameters() if p.requires_grad]
        # Penalties differentiate the adversarial passes (Trainer._critic_passes); off: each
        # makes its own critic pass (what the benchmark and the tests compare with).
        self._reuse_passes = True
        images_per_step = self.batch_size * self.n_critic
        self.schedules = Schedules(self.recipe, parts, self.execution, images_per_step)
        tables = self.recipe.regularizer_tables()
        self._starts = {key: table.get("start", 0) for key, table in tables.items()}
        # Which critic each regularizer is given (an index into D's outputs): a critic's own
        # (critics.NAME.REG) that one, the rest the [discriminator].
        names = [terms.name for terms in parts.critics]
        self._member = {
            key: names.index(key.split(".")[1]) if key.startswith("critics.") else 0
            for key in tables
        }
        self._several = len(parts.critics) > 1
        self._real_for_g = any(terms.loss.needs_real_for_g for terms in parts.critics)
        self._check_terms()

    def _check_terms(self) -> None:
        """A term comparing G's output with its target (``needs_input``) needs an
        ``[input]``; ``[loss] critic_start`` and ``adaptive_weight`` need a G-phase term that
        applies at every step from the start (G learns from it alone before, and the
        adaptive weight is a ratio to it); the adaptive weight needs G's ``last_layer``,
        whole on this process."""
        adversarial, parts = self.parts.adversarial, self.parts
        unpaired = parts.source.metadata.get("pairs", {}).get("unpaired", False)
        for name, _, regularizer in parts.regularizers:
            problem = None
            if getattr(regularizer, "needs_input", False) and parts.input is None:
                problem = (
                    "compares G's output with the image its input was made from: name the "
                    'input in [input] (e.g. name = "downscale", factor = 4)'
                )
            elif getattr(regularizer, "needs_input", False) and unpaired:
                problem = (
                    "compares G's output with its target, but the data's two domains are "
                    "unpaired: no target belongs to an input"
                )
            if problem:
                raise RecipeError([(f"regularizers.{name}", problem)], self.recipe.source)
        if unpaired and parts.critic_takes_input:
            problem = (
                "is conditioned on G's input, but the data's two domains are unpaired: no "
                "real image belongs to an input (use an unconditioned critic)"
            )
            raise RecipeError([("discriminator", problem)], self.recipe.source)
        if not (adversarial.start or adversarial.adaptive or adversarial.off):
            return
        key = "loss.adaptive_weight" if adversarial.adaptive else "loss.critic_start"
        key = "loss.adversarial_weight" if adversarial.off else key
        # From step 0: before the critic starts, G's loss is these terms alone; after, the
        # adaptive weight is a ratio to them.
        steady = [
            name
            for name, every, regularizer in parts.regularizers
            if regularizer.phase == "g" and every == 1 and self._starts[name] == 0
        ]
        problem = None
        if not steady:
            problem = (
                "needs a G-phase term applied at every step from step 0 (a "
                "[regularizers.reconstruction] table, every = 1, start = 0), which G learns from "
                + (
                    "and the adversarial term is weighed against"
                    if adversarial.adaptive
                    else "before the critic starts"
                )
            )
        elif adversarial.adaptive and self.execution.sharded:
            problem = (
                "weighs gradients at G's last layer, which ZeRO-3 and FSDP2 shard: use "
                'distributed.backend = "ddp" or ZeRO-1/2'
            )
        elif adversarial.adaptive and not isinstance(
            getattr(parts.generator, "last_layer", None), torch.nn.Parameter
        ):
            problem = (
                f"generator {parts.g_spec.name!r} names no last_layer (the weight of its last "
                "layer), which the adaptive weight differentiates"
            )
        if problem:
            raise RecipeError([(key, problem)], self.recipe.source)

    def _make_optimizer(self, role: str, parameters) -> torch.optim.Optimizer:
        parameters = [p for p in parameters if p.requires_grad]  # frozen submodules: none
        if role == "discriminator" and isinstance(self.parts.discriminator, CriticSet):
            # One parameter group per critic, with the settings its optim table changes.
            overrides = [dict(table["optim"]) for _, table in self.recipe.critics()]
            parameters = parameter_groups(
                self.parts.discriminator, self.optim[role], [{}, *overrides]
            )
        return build_optimizer(parameters, self.optim[role])

    # What plugins, benchmarks and users read of a run.
    generator = property(lambda self: self.parts.generator, doc="G as the backend holds it.")
    discriminator = property(lambda self: self.parts.discriminator, doc="D, likewise.")
    ema = property(lambda self: self.parts.ema, doc="The EMA of G (or None).")
    augmenter = property(lambda self: self.parts.augmenter, doc="The augmentation (or None).")
    sampler = property(lambda self: self.progress.sampler, doc="The data order.")

    @property
    def step(self) -> int:
        """Steps done: the next step trains step ``step + 1``."""
        return self.progress.step

    @step.setter
    def step(self, value: int) -> None:
        self.progress.step = value

    @property
    def backend_name(self) -> str:
        """How the run is executed, as the start of a run prints it."""
        if self.launch.backend == "deepspeed":
            return f"DeepSpeed ZeRO-{self.launch.zero_stage}"
        if self.launch.backend == "fsdp":
            return "FSDP2"
        return "DDP" if self.acc.num_processes > 1 else "one process"

    # ------------------------------------------------------------------ the step

    def critic(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        *,
        float32: bool = False,
        source: torch.Tensor | None = None,
    ) -> CriticOutput:
        """The only way the core (and plugins) call D: augmentation applied (when the recipe
        has one), labels passed, output normalised; ``source``, G's input for these images,
        is passed on to a critic conditioned on it (``D(x, y, source=...)``).

        ``float32=True`` runs D with autocast off on float32 inputs, for penalties on input
        gradients: under mixed precision their double backward would lose precision and
        overflow, and the loss scaler must only scale the final backward.
        """
        return self.critics(x, y, float32=float32, source=source)[0]

    def critics(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        *,
        float32: bool = False,
        source: torch.Tensor | None = None,
    ) -> list[CriticOutput]:
        """Every critic's output on ``x``, in recipe order (the ``[discriminator]`` first;
        one entry without ``[critics]``): one call of D, as :meth:`critic` describes."""
        if float32:
            x = x.float()
        if self.augmenter is not None:
            x = self.augmenter(x)
        extra = {}
        if self.parts.critic_takes_input:
            extra["source"] = source.float() if float32 else source
        if not float32:
            out = self.D(x, y, **extra)
        else:
            with self.execution.float32(self.D):
                out = self.D(x.float(), y, **extra)
        return list(out) if self._several else [as_critic_output(out)]

    def latents(self, n: int) -> torch.Tensor:
        """``n`` training latents from this process's stream."""
        return sample_latents(self.generator, n, self.progress.latent_rng, self.acc.device)

    def train_step(self, step: int, measure: bool = True) -> tuple[Phase, Phase]:
        """One generator update: n_critic D updates on fresh reals, then one G update.

        Before ``[loss] critic_start`` (and throughout with ``adversarial_weight = 0``) the
        critic is neither called nor trained: G learns from its other terms (reconstruction,
        perceptual) on one batch a step.
        ``measure=False`` leaves the gradient norms out (``Phase.grad_norm`` is None) unless
        clipping needs them: the loop passes it on the steps it does not log.
        """
        self.schedules.apply(step)
        adversarial = self.parts.adversarial.active(step)
        skips = []
        if adversarial:
            for i in range(self.n_critic):
                # The last critic update's fakes are generated with a graph and reused by the
                # G update (one G forward per step, as in the DCGAN reference).
                d, batch = self.critic_update(step, i == self.n_critic - 1, measure)
                skips.append(d.skipped)
        else:
            batch = self._batch(keep_graph=True)
            nothing = torch.zeros((), device=self.acc.device)
            d = Phase(nothing, None, nothing, {})
        g = self.generator_update(step, batch, adversarial, measure)
        skips.append(g.skipped)
        self._after_updates(step, skips)
        return d, g

    def generator_update(self, step: int, batch, adversarial: bool, measure: bool) -> Phase:
        """G's update on the last D update's batch: the adversarial term (with D frozen and
        its gradients not all-reduced) weighted as ``[loss]`` says, plus the G phase's terms."""
        parts = self.parts
        real, y_real, y_fake, z, fake, source = batch
        tensors, weighting = (real, fake, z, y_real, y_fake), parts.adversarial
        self._critic_grad(False)
        with self.execution.no_sync("discriminator"):
            term = None  # the adversarial term (none before [loss] critic_start)
            outputs: dict[str, list[CriticOutput]] = {}  # for G-phase terms (feature matching)
            per_critic: dict[str, torch.Tensor] = {}
            if adversarial:
                outputs["fake"] = self.critics(fake, y_fake, source=source)
                if self._real_for_g:
                    outputs["real"] = self.critics(real, y_real, source=source)
                term, per_critic = self._weighed("g_loss", outputs, y_real, y_fake)
            adaptive = term is not None and weighting.adaptive
            if term is not None and not adaptive and weighting.weight != 1.0:
                term = term * weighting.weight
            loss, logs = self._regularize(
                None if adaptive else term, tensors, "g", step, source=source, outputs=outputs
            )
            if adaptive:
                loss, logs["adversarial_weight"] = self._adaptive(term, loss)
            if per_critic:
                logs.update(per_critic)
            norm, skipped = self._update("generator", loss, measure)
        self._critic_grad(True)
        return Phase(loss.detach(), norm, skipped, logs)

    def _adaptive(self, adversarial: torch.Tensor, rest: torch.Tensor):
        """VQGAN's adaptive weight: the adversarial term scaled so that its gradient at G's
        last layer is as large as the other terms' (``||∇ rest|| / (||∇ adv|| + 1e-4)``,
        clamped to ``[0, adaptive_max]``, no gradient through the ratio), times ``weight``.
        Under several processes the two gradients are averaged over them first: the ratio is
        the global batch's, the same on every process and as one process computes it."""
        last = self.parts.generator.last_layer
        (rest_grad,) = torch.autograd.grad(rest, last, retain_graph=True)
        (adv_grad,) = torch.autograd.grad(adversarial, last, retain_graph=True)
        grads = torch.stack([rest_grad.float(), adv_grad.float()])
        if self.acc.num_processes > 1:  # the global batch's gradients, as one process has them
            grads = self.acc.reduce(grads, reduction="mean")
        ratio = grads[0].norm() / (grads[1].norm() + 1e-4)
        ratio = ratio.clamp(0.0, self.parts.adversarial.adaptive_max).detach()
        weight = ratio * self.parts.adversarial.weight
        return rest + weight * adversarial, weight

    def _batch(self, keep_graph: bool):
        """The next batch ``(real, y_real, y_fake, z, generated, source)``: fresh reals, G's
        input derived from them (``[input]``; else None), and fakes, ``generated`` with a
        graph into G when ``keep_graph``."""
        parts = self.parts
        real, y_real = self.batches.next(with_labels=parts.num_classes > 0)
        y_fake = y_real  # fakes follow the data's class distribution
        z = self.latents(len(real))
        source = None
        if parts.input is not None:
            real, stored = split(real, parts.data)  # paired data: the target, its input
            with torch.no_grad():
                source = parts.input(stored)
        extra = {} if source is None else {"source": source}
        if keep_graph:
            generated = self.G(z, y_fake, **extra)
        else:
            with torch.no_grad():
                generated = self.G(z, y_fake, **extra)
        return real, y_real, y_fake, z, generated, source

    def critic_update(self, step: int, keep_graph: bool, measure: bool = True):
        """One D update on fresh reals and fakes; returns its :class:`Phase` and the batch
        ``(real, y_real, y_fake, z, generated, source)`` (:meth:`_batch`), ``generated`` with
        a graph into G when ``keep_graph`` (the G update reuses it). D only sees the fakes
        detached, so its loss has no graph into G."""
        parts = self.parts
        batch = self._batch(keep_graph)
        real, y_real, y_fake, z, generated, source = batch
        fake = generated.detach()
        passes = self._critic_passes(step, real, fake, y_real, y_fake, source)
        outputs = {which: [out for _, out in members] for which, members in passes.items()}
        loss, per_critic = self._weighed("d_loss", outputs, y_real, y_fake)
        tensors = (real, fake, z, y_real, y_fake)
        loss, logs = self._regularize(loss, tensors, "d", step, passes=passes, source=source)
        if per_critic:
            logs.update(per_critic)
        norm, skipped = self._update("discriminator", loss, measure)
        real_out, fake_out = outputs["real"][0], outputs["fake"][0]  # the [discriminator]'s
        if parts.augmenter is not None:
            parts.augmenter.observe(real_out.logits)
        d = Phase(loss.detach(), norm, skipped, logs, real_out, fake_out)
        return d, batch

    def _weighed(self, which: str, outputs, y_real, y_fake):
        """Every critic's ``d_loss`` or ``g_loss`` (``which``) on its ``outputs["real"]`` and
        ``outputs["fake"]``, weighed and summed; with several critics also each critic's term,
        for the log (``d_loss/NAME``, ``g_loss/NAME``)."""
        fakes, reals = outputs["fake"], outputs.get("real")
        if not self._several:  # one critic: its loss, as it is
            loss = self.parts.loss
            if which == "d_loss":
                return loss.d_loss(reals[0], fakes[0], y_real, y_fake), {}
            real = reals[0] if reals is not None and loss.needs_real_for_g else None
            return loss.g_loss(fakes[0], real, y_real, y_fake), {}
        total, logs = None, {}
        for k, terms in enumerate(self.parts.critics):
            real = reals[k] if reals is not None else None
            if which == "d_loss":
                term = terms.loss.d_loss(real, fakes[k], y_real, y_fake)
            else:
                real = real if terms.loss.needs_real_for_g else None
                term = terms.loss.g_loss(fakes[k], real, y_real, y_fake)
            logs[f"{which}/{terms.name}"] = term.detach()
            if terms.weight != 1.0:
                term = term * terms.weight
            total = term if total is None else total + term
        return total, logs

    def _critic_passes(
        self,
        step: int,
        real: torch.Tensor,
        fake: torch.Tensor,
        y_real: torch.Tensor | None,
        y_fake: torch.Tensor | None,
        source: torch.Tensor | None = None,
    ) -> dict[str, list[CriticPass]]:
        """The D phase's adversarial passes on the reals and the fakes: each critic's, in
        D's order (one call of D gives them all).

        A pass that a regularizer due at ``step`` reuses (its ``reuses``: R1 the reals', R2
        the fakes') runs on inputs requiring grad, in float32 with autocast off, so the
        penalty differentiates it instead of calling D again: with R1 and R2, two critic
        forwards a D update instead of four. Under mixed precision such a pass is the float32
        pass the penalty would have made, and the adversarial term takes its logits from it
        (full precision, on the steps the penalty is due); the other passes run in bf16/fp16.
        """
        reused: set[str] = set()
        if self._reuse_passes:
            for name, every, regularizer in self.parts.regularizers:
                if regularizer.phase == "d" and self._due(name, every, step):
                    reused.update(getattr(regularizer, "reuses", ()))
        passes = {}
        for which, x, y in (("real", real, y_real), ("fake", fake, y_fake)):
            if which in reused:
                x = x.detach().float().requires_grad_(True)
            outs = self.critics(x, y, float32=which in reused, source=source)
            passes[which] = [CriticPass(x, out) for out in outs]
        return passes

    def _after_updates(self, step: int, skips: list[torch.Tensor]) -> None:
        """The skip streak, the averages and the augmentation probability after a step."""
        # A step with any skipped update extends the streak, a clean one resets it (on the
        # device: the loop reads it at log and checkpoint steps only).
        streak = self.progress.skipped_in_a_row
        any_skipped = torch.maximum(*skips) if len(skips) == 2 else torch.stack(skips).amax()
        torch.addcmul(any_skipped, streak, any_skipped, out=streak)
        for average in (self.parts.ema, self.parts.mirror):  # skipped with the G step
            if average is not None:
                with self.execution.full_tensors("generator") as current:
                    average.update(step + 1, skips[-1], current)
        if self.parts.augmenter is not None:
            self.parts.augmenter.adjust(step)

    def _critic_grad(self, enabled: bool) -> None:
        """Freeze or unfreeze D's parameters (a cached list: no module traversal per step)."""
        for p in self._critic_params:
            p.requires_grad_(enabled)

    def _due(self, name: str, every: int, step: int) -> bool:
        """Whether regularizer ``name`` applies at ``step``: every ``every`` steps from its
        ``start``."""
        return step % every == 0 and step >= self._starts.get(name, 0)

    def _regularize(
        self,
        loss: torch.Tensor | None,
        tensors: tuple,
        phase: str,
        step: int,
        *,
        passes=None,
        source: torch.Tensor | None = None,
        outputs=None,
    ):
        """``loss`` plus the phase's regularizer terms due at ``step``, and their logs;
        ``tensors``: ``(real, fake, z, y_real, y_fake)``; ``passes``: the D phase's
        adversarial passes (each critic's), run for reuse where a term due asked; ``source``:
        G's input for the batch (``[input]``); ``outputs``: the G phase's adversarial critic
        outputs. ``loss`` None: the terms alone. A critic's own regularizers are given that
        critic, the others the ``[discriminator]``."""
        logs: dict[str, torch.Tensor] = {}
        contexts: dict[int, RegularizerContext] | None = None
        for name, every, regularizer in self.parts.regularizers:
            if regularizer.phase != phase or not self._due(name, every, step):
                continue
            member = self._member[name]
            if contexts is None:  # built only when a term is due (launch-bound steps feel it)
                contexts = {}
            ctx = contexts.get(member)
            if ctx is None:
                made = self._context(member, phase, step, tensors, passes, source, outputs)
                ctx = contexts[member] = made
            term, reg_logs = regularizer(ctx)
            scaled = every * term  # lazy regularization keeps the term's average weight
            loss = scaled if loss is None else loss + scaled
            logs[name] = term.detach()
            logs.update({f"{name}/{k}": v for k, v in reg_logs.items()})
        return loss, logs  # never None: _check_terms keeps a G-phase term due at every step

    def _context(self, k, phase, step, tensors, passes, source, outputs) -> RegularizerContext:
        """What a regularizer of critic ``k`` (an index into D's outputs) is given."""
        critics = self.critics if source is None else partial(self.critics, source=source)
        critic = partial(_member, critics, k)  # one critic: critics(x, y)[0] is critic(x, y)
        mine = {which: members[k] for which, members in (passes or {}).items()}
        return RegularizerContext(
            phase,
            step,
            self.G,
            critic,
            *tensors,
            mine,
            source=source,
            critics=critics,
            outputs=outputs or {},
        )

    def _update(
        self, role: str, loss: torch.Tensor, measure: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``role``'s update through the execution: backward, the non-finite check (a
        non-finite loss or gradient on any process skips the update on every process),
        optional clipping and the optimizer step. Returns the gradient norm (None when neither
        ``measure`` nor clipping asks for it) and the skip flag (device tensors).
        """
        norm, found_inf = self.execution.update(role, loss, measure)
        self.progress.skipped += found_inf
        return norm, found_inf

    # ------------------------------------------------------------------ the loop

    def fit(self) -> Path | None:
        """Train from the current step to ``train.steps``; return the export path.

        Raises :class:`~ganforge.errors.TrainingStopped` after Ctrl-C or SIGTERM (once the
        checkpoint of the last complete step is written) or after
        ``train.max_skipped_in_a_row`` skipped steps in a row, and a PluginError after a
        lifecycle hook raised (its step's checkpoint written first).
        """
        acc, main = self.acc, self.acc.is_main_process
        try:
            resume = self.recipe.get("train.resume")
            if not self.directory.locked:  # a second fit() of this trainer
                self.directory.lock_for(acc)
            self.start_message += self.directory.take(acc, resume, self.targets.resumed)
            if main:
                self.directory.prepare(self.step, self.recipe.to_toml())
            acc.print(
                f"ganforge: {acc.num_processes} process(es) on {acc.device} "
                f"({self.backend_name}), global batch {self.batch_size} = "
                f"{self.info.per_process_batch} per process, mixed precision "
                f"{acc.mixed_precision}, run dir {self.run_dir}\n"
                f"ganforge: {self.start_message}; training to step {self.steps}"
            )
            if main:
                self.plugins.run_start(self.info)
            tracking.start(acc, self.recipe, self.step)
            return self._loop()
        except OSError as err:  # a write in the run directory: a full disk, a quota
            raise GanforgeError(self.directory.write_failure(err)) from None
        finally:
            tracking.finish(acc)  # flushed and closed on Ctrl-C and errors too
            self.directory.release()  # free again, however the run ended

    def _loop(self) -> Path | None:
        # Longer than 60 lines on purpose: the loop's order (step, log, samples, eval,
        # checkpoint, stop) is the contract every hook and checkpoint relies on, in one view.
        from tqdm.auto import tqdm

        acc, train, outputs = self.acc, self.recipe.section("train"), self.outputs
        main = acc.is_main_process
        shown = {"dynamic_ncols": True, "unit": "step", "mininterval": 0.5}
        bar = tqdm(total=self.steps, initial=self.step, disable=not main, **shown)
        last_time, last_step = time.perf_counter(), self.step
        started, first_step, watch = last_time, self.step, Watch()
        eval_every, save_every = self.recipe.get("eval.every"), train["checkpoint_every"]
        vote = StopVote(acc)
        with bar, StopSignals(acc.num_processes, announce=main) as stop:
            while self.step < self.steps:
                upcoming = self.step + 1
                logging = upcoming % train["log_every"] == 0 or upcoming == self.steps
                d, g = self.train_step(self.step, measure=logging)
                self.step = upcoming
                bar.update(1)
                last = self.step == self.steps
                saving = (save_every and self.step % save_every == 0) or last
                evaluating = eval_every and (self.step % eval_every == 0 or last)
                if logging:
                    now = time.perf_counter()
                    seen = (self.step - last_step) * self.n_critic * self.batch_size
                    values = self._log_values(d, g, seen / max(now - last_time, 1e-9))
                    last_time, last_step = now, self.step
                    if main:
                        shown = {"d": values.get("d_loss"), "g": values["g_loss"]}
                        bar.set_postfix(
                            **{k: f"{v:.3f}" for k, v in shown.items() if v is not None},
                            img_s=f"{values['images_per_s']:.0f}",
                        )
                        for warning in watch.check(values):
                            bar.write(warning)
                        outputs.record(values)
                if logging or saving:  # host reads happen at these steps anyway
                    self._check_skipped_in_a_row(train["max_skipped_in_a_row"])
                if main and (self.step % train["sample_every"] == 0 or last):
                    tracking.log_image(acc, "samples", outputs.save_samples(self.step), self.step)
                if evaluating:
                    state.sync_buffers(self.parts, acc)  # every process samples with rank 0's
                    outputs.log_evaluation(self.step)
                checkpoint = self.save_checkpoint() if saving else None
                # Every process's reason, agreed one step later under several processes. A stop
                # asked for during the last step lets the run finish (export, report); a
                # failed plugin stops it there too, its checkpoint written first.
                reason = vote.post(local_reason(stop, self.hooks))
                if last:
                    reason = max(reason, vote.settle())
                if reason == PLUGIN_FAILED or (reason and not last):
                    vote.settle()  # no collective left in flight
                    path = checkpoint if saving else self.save_checkpoint()
                    if reason == PLUGIN_FAILED:
                        raise self.hooks.stopped(self.step, path)
                    raise interrupted(self.step, path, int(reason))
        state.sync_buffers(self.parts, acc)
        export_path = outputs.export(self.step) if main else None
        acc.wait_for_everyone()
        if main:
            self.plugins.run_end(self.info, self.step, str(export_path) if export_path else None)
            images = (self.step - first_step) * self.n_critic * self.batch_size
            elapsed = time.perf_counter() - started
            steps = (first_step, self.step)
            outputs.print_summary(elapsed, steps, images, export_path, outputs.write_report())
        tracking.finish(acc)
        acc.end_training()
        return export_path

    def _check_skipped_in_a_row(self, limit: int) -> None:
        """Stop when the last ``limit`` steps were all skipped (0: never stop). The counter is
        the same on every process (the skip flags are all-reduced), so all stop together."""
        if not limit:
            return
        in_a_row = int(self.progress.skipped_in_a_row.item())
        if in_a_row >= limit:
            self.acc.end_training()
            raise too_many_skipped(self.step, in_a_row, limit, self.run_dir)

    def _log_values(self, d: Phase, g: Phase, images_per_s: float) -> dict[str, Any]:
        """*Collective.* The step's log record, averaged over the processes (one host read)."""
        trained = (
            d.real is not None
        )  # the critic trained this step (not before [loss] critic_start)
        named = {
            "d_loss": d.loss if trained else None,
            "g_loss": g.loss,
            "d_real": d.real.logits.detach().float().mean() if trained else None,
            "d_fake": d.fake.logits.detach().float().mean() if trained else None,
            # The critic's sign accuracy: reals scored above 0, fakes below (equal counts).
            "d_accuracy": torch.cat(
                [(d.real.logits.detach() > 0).flatten(), (d.fake.logits.detach() < 0).flatten()]
            )
            .float()
            .mean()
            if trained
            else None,
            "grad_norm_d": d.grad_norm,
            "grad_norm_g": g.grad_norm,
            # Regularizer terms as reg/NAME; with several critics each one's loss as
            # d_loss/CRITIC and g_loss/CRITIC.
            **{
                k if k.startswith(PER_CRITIC) else f"reg/{k}": v
                for k, v in {**d.logs, **g.logs}.items()
            },
            **(self.augmenter.logs() if self.augmenter is not None else {}),
        }
        named = {k: v for k, v in named.items() if v is not None}
        stacked = torch.stack([v.detach().float().reshape(()) for v in named.values()])
        stacked = self.acc.reduce(stacked, reduction="mean")
        values = dict(zip(named, stacked.tolist(), strict=True))
        return {
            "step": self.step,
            **values,
            "lr_g": self.execution.param_groups("generator")[0]["lr"],
            "lr_d": self.execution.param_groups("discriminator")[0]["lr"],
            **self.schedules.values(self.step - 1),  # the values the last step trained with
            "skipped_steps": int(self.progress.skipped.item()),
            "images_per_s": images_per_s,
            "kimg": self.step * self.n_critic * self.batch_size / 1000,
        }

    def save_checkpoint(self) -> Path | None:
        """*Collective.* Write the whole training state (the main process writes) and tell the
        plugins (``ganforge_checkpoint``)."""
        state.sync_buffers(self.parts, self.acc)
        path = state.save_checkpoint(
            self.parts,
            self.execution,
            self.progress,
            recipe=self.recipe,
            launch=self.launch,
            export=partial(self.outputs.export_metadata, self.step),
        )
        if path is not None:
            self.hooks.checkpoint(self.step, str(path))
        return path
