"""The training loop: n_critic D updates on fresh reals, then one G update with D frozen.

Everything concrete (networks, losses, regularizers, data) comes from plugins through the
registry; this module owns the order of operations, backward, the non-finite check (with
``updates.py``), logging and checkpoints. Sample grids, evaluation and the export are in
``outputs.py``. See docs/architecture.md for the contracts it keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganforge import state, tracking
from ganforge.augment import Augmentation, Augmenter
from ganforge.averaging import EMA, lr_factor, set_lr
from ganforge.checkpoint import newest_checkpoint
from ganforge.clusters import cluster_labels, cluster_names, label_prior
from ganforge.components import (
    CriticOutput,
    Loss,
    Regularizer,
    RegularizerContext,
    as_critic_output,
    eval_mode,
    sample_latents,
)
from ganforge.data import (
    BatchSource,
    DataSource,
    ImageData,
    ShardedSampler,
    open_store,
    to_model_range,
)
from ganforge.diagnostics import Watch
from ganforge.distributed import (
    broadcast_buffers,
    broadcast_from_main,
    make_accelerator,
    plan_launch,
)
from ganforge.errors import DataError, GanforgeError, PluginError, RecipeError
from ganforge.execution import make_execution
from ganforge.outputs import RunOutputs
from ganforge.plugins import Plugins
from ganforge.recipe import Recipe
from ganforge.runfiles import append_jsonl, cut_jsonl, write_text
from ganforge.runfiles import read_metrics as read_metrics  # re-exported: its old home
from ganforge.runlock import RunLock
from ganforge.stopping import StopSignals, interrupted, too_many_skipped
from ganforge.updates import build_optimizer

#: ``Trainer._stop_reason`` for a lifecycle hook that raised (above Ctrl-C's 1).
PLUGIN_FAILED = 2.0


@dataclass(frozen=True)
class RunInfo:
    """What lifecycle hooks learn about a run."""

    recipe: Recipe
    run_dir: Path
    num_processes: int
    per_process_batch: int
    start_step: int
    steps: int
    channels: int
    resolution: int
    num_classes: int


@dataclass
class Phase:
    """Tensors one phase leaves for logging; read on the host only every ``log_every`` steps."""

    loss: torch.Tensor
    grad_norm: torch.Tensor | None  # measured on logged steps (and always when clipping)
    skipped: torch.Tensor
    logs: dict[str, torch.Tensor]
    real: CriticOutput | None = None
    fake: CriticOutput | None = None


class Trainer(RunOutputs):
    """Builds a run from a validated recipe and trains it."""

    def __init__(self, recipe: Recipe, plugins: Plugins, accelerator=None):
        self.recipe, self.plugins, self.registry = recipe, plugins, plugins.registry
        run, train = recipe.section("run"), recipe.section("train")
        self.launch = plan_launch(
            recipe.section("distributed"), train["grad_clip"], run["mixed_precision"]
        )
        self.acc = accelerator or make_accelerator(
            run["mixed_precision"], run["log_with"], recipe.run_dir
        )
        if self.launch.zero_stage == 3 and recipe.regularizers():
            raise GanforgeError(
                "DeepSpeed ZeRO-3 runs no regularizers yet: penalties on input gradients "
                "(gradient penalty, R1, R2, path length) backward a second time through "
                "parameters ZeRO-3 has already released. Use ZeRO-1/2 (--zero_stage 2) or FSDP2 "
                "(docs/distributed.md), or remove [regularizers]"
            )
        if self.acc.device.type == "cuda":  # process-wide, as PyTorch keeps them
            if train["tf32"] != "auto":
                torch.backends.cuda.matmul.allow_tf32 = train["tf32"] == "on"
                torch.backends.cudnn.allow_tf32 = train["tf32"] == "on"
            torch.backends.cudnn.benchmark = train["cudnn_benchmark"]
        self.steps, self.n_critic = train["steps"], train["n_critic"]
        self.batch_size, self.grad_clip = train["batch_size"], train["grad_clip"]
        world = self.acc.num_processes
        if self.batch_size % world:
            problem = f"{self.batch_size} does not divide by the {world} processes of this launch"
            raise RecipeError([("train.batch_size", problem)], recipe.source)
        self.run_dir = recipe.run_dir
        self.seed = run["seed"]
        self.lock = RunLock(self.run_dir)  # taken by fit(): building a run changes no file

        # What a run trains: data, models, loss, regularizers, augmentation and the EMA, built
        # from the recipe (plain modules on the device, whole on every process).
        self.data = self.loaded_data = self._open_data()
        data_cfg = recipe.section("data")
        # What train.resume continues (or train.init_from starts from), found before anything
        # is built from the data: a clustered run continues on its checkpoint's clusters.
        self.targets = state.targets(self)
        self.label_prior: list[float] | None = None  # set by data.clusters
        if data_cfg["clusters"]:
            self._condition_on_clusters(data_cfg["clusters"])
        conditioned = data_cfg["conditional"] or data_cfg["clusters"] > 0
        self.num_classes = self.data.num_classes if conditioned else 0
        if data_cfg["conditional"] and self.num_classes < 2:
            raise DataError(f"data.conditional = true, but data {data_cfg['name']!r} has no labels")
        self._build_components()
        # Weights from the checkpoint that train.resume continues (or train.init_from starts
        # from) go into the plain modules, before any backend shards them.
        state.load_weights(self)

        # How it is executed: one process or DDP, DeepSpeed ZeRO, or FSDP2.
        self.execution = make_execution(
            self.launch.backend,
            self.acc,
            self.grad_clip,
            zero_stage=self.launch.zero_stage,
            batch_size=self.batch_size,
        )
        # Samples and the export need the whole generator on one process; where the backend
        # splits it (ZeRO-3, FSDP2) and no EMA is kept, a copy follows it (decay 0).
        self.mirror = None
        if self.ema is None and self.execution.sharded:
            self.mirror = EMA(self.generator, 0.0)
        self.G, self.D = self.execution.prepare(
            self.generator, self.discriminator, self._make_optimizer
        )
        # The models as the backend holds them (DDP's unwrapped; sharded under ZeRO-3/FSDP2):
        # checkpoints and the EMA read them through the execution.
        self.generator = self.execution.modules["generator"]
        self.discriminator = self.execution.modules["discriminator"]
        self._critic_params = list(self.discriminator.parameters())

        # Per-rank streams: data order and latents differ across ranks, repeat across runs.
        rank = self.acc.process_index
        self.sampler = ShardedSampler(len(self.data), self.batch_size, self.seed, rank, world)
        self.batches = BatchSource(
            self.data, self.sampler, self.acc.device, self.memory_format or torch.contiguous_format
        )
        # On the training device: drawing on the host costs host time every step (a staged
        # copy from pageable memory after it), and a CUDA graph can only capture device draws.
        self.latent_rng = torch.Generator(self.acc.device).manual_seed(self.seed * 7919 + rank + 1)
        torch.manual_seed(self.seed + rank)  # dropout and other module randomness
        self.step = 0
        self.skipped = torch.zeros((), device=self.acc.device)
        # Steps in a row with a skipped update (train.max_skipped_in_a_row), on the device.
        self.skipped_in_a_row = torch.zeros((), device=self.acc.device)
        # The newest log and eval records, for the end-of-run summary (main process).
        self.last_log: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        # A lifecycle hook's failure during training, which stops the run at that step.
        self._plugin_failure: PluginError | None = None
        # Resume (train.resume): optimizers, counters, sampler and random streams.
        self.start_message = state.start(self)
        self._evaluation = self._prepare_evaluation() if recipe.get("eval.every") else None
        self.info = RunInfo(
            recipe=recipe,
            run_dir=self.run_dir,
            num_processes=world,
            per_process_batch=self.batch_size // world,
            start_step=self.step,
            steps=self.steps,
            channels=self.data.channels,
            resolution=self.data.resolution,
            num_classes=self.num_classes,
        )

    @property
    def backend_name(self) -> str:
        """How the run is executed, as the start of a run prints it."""
        if self.launch.backend == "deepspeed":
            return f"DeepSpeed ZeRO-{self.launch.zero_stage}"
        if self.launch.backend == "fsdp":
            return "FSDP2"
        return "DDP" if self.acc.num_processes > 1 else "one process"

    @property
    def opt_g(self) -> torch.optim.Optimizer:
        return self.execution.optimizers["generator"]

    @property
    def opt_d(self) -> torch.optim.Optimizer:
        return self.execution.optimizers["discriminator"]

    # ------------------------------------------------------------------ building

    def _own_run_dir(self) -> None:
        """Lock the run directory before anything in it changes (the main process holds the
        lock for the whole launch; the others stop with it)."""
        problem = None
        if self.acc.is_main_process:
            try:
                self.lock.acquire()
            except GanforgeError as err:
                problem = err
        if self.acc.num_processes > 1:
            flag = torch.tensor(float(problem is not None), device=self.acc.device)
            torch.distributed.broadcast(flag, src=0)
            if flag.item() and problem is None:
                problem = GanforgeError(f"the main process could not lock {self.run_dir}")
        if problem is not None:
            raise problem

    def _build_components(self) -> None:
        """Models (identical initial weights on every rank, from the recipe seed), loss,
        regularizers, augmentation and the EMA, on the device."""
        recipe, device = self.recipe, self.acc.device
        core = {
            "resolution": self.data.resolution,
            "channels": self.data.channels,
            "num_classes": self.num_classes,
        }
        torch.manual_seed(self.seed)
        self.g_spec, self.d_spec = recipe.component("generator"), recipe.component("discriminator")
        generator = self._build("generator", self.g_spec.name, core, self.g_spec.kwargs, nn.Module)
        discriminator = self._build(
            "discriminator", self.d_spec.name, core, self.d_spec.kwargs, nn.Module
        )
        loss_spec = recipe.component("loss")
        self.loss: Loss = self._build("loss", loss_spec.name, {}, loss_spec.kwargs, Loss)
        self.regularizers = [
            (name, every, self._build("regularizer", name, {}, kwargs, Regularizer))
            for name, every, kwargs in recipe.regularizers()
        ]
        for _, _, regularizer in self.regularizers:
            if isinstance(regularizer, nn.Module):  # its state (buffers) lives beside the models
                regularizer.to(device)
        self.augmenter = self._build_augmenter()
        train = recipe.section("train")
        self.memory_format = torch.channels_last if train["channels_last"] else None
        # Under bf16 on a CPU, channels_last was 1.09x faster (AMD EPYC): no warning there.
        cpu_without_bf16 = device.type == "cpu" and self.acc.mixed_precision != "bf16"
        if self.memory_format is not None and cpu_without_bf16:
            self.acc.print(
                "ganforge: warning: train.channels_last = true on a CPU without bf16: one "
                "Intel CPU ran the quickstart about 5x slower that way, an AMD EPYC at the "
                "same speed (docs/performance.md); measure before keeping it"
            )
        self.generator, self.discriminator = generator.to(device), discriminator.to(device)
        if self.memory_format is not None and self.data.is_image:
            generator.to(memory_format=self.memory_format)
            discriminator.to(memory_format=self.memory_format)
        self.optim = recipe.section("optim")
        self._lr_decays = any(
            self.optim[m]["lr_decay"] != "none" for m in ("generator", "discriminator")
        )
        self._check_class_head(loss_spec.name)
        ema = recipe.section("ema")
        self.ema = EMA(generator, ema["decay"], ema["warmup_steps"]) if ema["decay"] else None

    def _make_optimizer(self, role: str, parameters) -> torch.optim.Optimizer:
        return build_optimizer(parameters, self.optim[role])

    def _open_data(self) -> ImageData:
        data_cfg = self.recipe.component("data")
        resolution = self.recipe.get("data.resolution")
        source = self._build(
            "dataset", data_cfg.name, {"resolution": resolution}, data_cfg.kwargs, DataSource
        )
        self.data_source = source
        return open_store(source, resolution)

    def _condition_on_clusters(self, k: int) -> None:
        """Self-conditioning: k-means clusters of the data take the labels' place (the
        checkpoint's on a resume or init_from), and sampling draws them with their share of the
        data (the label prior)."""
        saved = state.saved_clusters(self.targets[0] or self.targets[1], k, len(self.data))
        labels = saved if saved is not None else self._cluster_labels(k)
        self.data = replace(self.data, labels=labels, class_names=cluster_names(k))
        self.label_prior = label_prior(labels, k)
        sizes = np.bincount(labels, minlength=k)
        origin = ", as the checkpoint has them" if saved is not None else ""
        self.acc.print(
            f"ganforge: conditioning on {k} k-means clusters of the data "
            f"({sizes.min()}-{sizes.max()} samples each{origin})"
        )

    def _cluster_labels(self, k: int) -> np.ndarray:
        """k-means clusters of the data: the main process clusters, the others receive (k-means
        on another machine's CPU could split a tie differently). -1 everywhere says it failed."""
        labels = torch.full((len(self.data),), -1, dtype=torch.int64)
        problem = None
        if self.acc.is_main_process:
            try:
                labels = torch.from_numpy(cluster_labels(self.data, k, self.seed))
            except DataError as err:
                problem = err
        labels = broadcast_from_main(labels, self.acc)
        if problem is not None:
            raise problem
        if len(labels) and labels[0] < 0:
            raise DataError("data.clusters: the main process could not cluster the data")
        return labels.numpy()

    def _build_augmenter(self) -> Augmenter | None:
        settings = self.recipe.section("augment")
        if not settings["name"]:
            return None
        spec = self.recipe.component("augment")
        augment = self._build("augmentation", spec.name, {}, spec.kwargs, Augmentation)
        return Augmenter(
            augment,
            p=settings["p"],
            adaptive=settings["adaptive"],
            target=settings["target"],
            interval=settings["interval"],
            speed_images=settings["speed_images"],
            batch_size=self.batch_size,
            device=self.acc.device,
        )

    def _build(self, kind: str, name: str, core: dict, kwargs, expected):
        return self.plugins.build(kind, name, core, kwargs, expected, self.recipe.source)

    @torch.no_grad()
    def _check_class_head(self, loss_name: str) -> None:
        """The critic has a class head exactly when the loss trains one, checked on two real
        images before training (eval mode: no statistics or power iterations move)."""
        uses = bool(getattr(self.loss, "uses_class_logits", False))
        x = to_model_range(torch.from_numpy(np.array(self.data.images[:2]))).to(self.acc.device)
        y = None
        if self.num_classes:
            y = torch.from_numpy(np.array(self.data.labels[:2])).to(self.acc.device)
        with eval_mode(self.discriminator) as critic:
            has = as_critic_output(critic(x, y)).class_logits is not None
        d_name = self.d_spec.name
        if uses and not has:
            problem = (
                f"loss {loss_name!r} trains the critic's class head, but discriminator "
                f'{d_name!r} returned none: set discriminator.condition = "auxiliary"'
            )
            raise RecipeError([("discriminator", problem)], self.recipe.source)
        if has and not uses:
            problem = (
                f"discriminator {d_name!r} has a class head that loss {loss_name!r} does not "
                'train: use loss.name = "acgan", or drop discriminator.condition = '
                '"auxiliary" (an untrained head\'s parameters also stop multi-process runs)'
            )
            raise RecipeError([("discriminator", problem)], self.recipe.source)

    # ------------------------------------------------------------------ the step

    def critic(
        self, x: torch.Tensor, y: torch.Tensor | None, *, float32: bool = False
    ) -> CriticOutput:
        """The only way the core (and plugins) call D: augmentation applied (when the recipe
        has one), labels passed, output normalised.

        ``float32=True`` runs D with autocast off on float32 inputs, for penalties on input
        gradients: under mixed precision their double backward would lose precision and
        overflow, and the loss scaler must only scale the final backward.
        """
        if float32:
            x = x.float()
        if self.augmenter is not None:
            x = self.augmenter(x)
        if not float32:
            return as_critic_output(self.D(x, y))
        # Under mixed precision Accelerate replaces the inner module's forward with an autocast
        # wrapper (inside any DDP wrapper). Swap the original back in for this one call, still
        # going through DDP and the module's hooks.
        inner = self.acc.unwrap_model(self.D)
        original = inner.__dict__.get("_original_forward")
        wrapped = inner.__dict__.get("forward")
        with torch.autocast(device_type=x.device.type, enabled=False):
            if original is None or wrapped is None:
                return as_critic_output(self.D(x.float(), y))
            inner.forward = original
            try:
                return as_critic_output(self.D(x.float(), y))
            finally:
                inner.forward = wrapped

    def latents(self, n: int) -> torch.Tensor:
        return sample_latents(self.generator, n, self.latent_rng, self.acc.device)

    def train_step(self, step: int, measure: bool = True) -> tuple[Phase, Phase]:
        """One generator update: n_critic D updates on fresh reals, then one G update.

        ``measure=False`` leaves the gradient norms out (``Phase.grad_norm`` is None) unless
        clipping needs them: the loop passes it on the steps it does not log.
        """
        conditional = self.num_classes > 0
        if self._lr_decays:  # otherwise the rates stay the recipe's (a resume cannot change them)
            for role in ("discriminator", "generator"):
                config = self.optim[role]
                set_lr(self.execution.param_groups(role), config["lr"] * lr_factor(step, config))
        skips = []
        for i in range(self.n_critic):
            real, y_real = self.batches.next(with_labels=conditional)
            y_fake = y_real  # fakes follow the data's class distribution
            z = self.latents(len(real))
            # The last critic update's fakes are generated with a graph and reused by the G
            # update (one G forward per step, as in the DCGAN reference); D only sees them
            # detached, so its loss has no graph into G.
            if i == self.n_critic - 1:
                generated = self.G(z, y_fake)
            else:
                with torch.no_grad():
                    generated = self.G(z, y_fake)
            fake = generated.detach()
            real_out, fake_out = self.critic(real, y_real), self.critic(fake, y_fake)
            loss = self.loss.d_loss(real_out, fake_out, y_real, y_fake)
            loss, logs = self._regularize(loss, "d", step, real, fake, z, y_real, y_fake)
            norm, skipped = self._update(self.D, loss, measure)
            skips.append(skipped)
            if self.augmenter is not None:
                self.augmenter.observe(real_out.logits)
            d = Phase(loss.detach(), norm, skipped, logs, real_out, fake_out)

        # G phase: D is frozen and its gradients are not all-reduced; G's are.
        self._critic_grad(False)
        with self.execution.no_sync("discriminator"):
            fake = generated
            fake_out = self.critic(fake, y_fake)
            real_out = self.critic(real, y_real) if self.loss.needs_real_for_g else None
            loss = self.loss.g_loss(fake_out, real_out, y_real, y_fake)
            loss, logs = self._regularize(loss, "g", step, real, fake, z, y_real, y_fake)
            norm, skipped = self._update(self.G, loss, measure)
            skips.append(skipped)
            g = Phase(loss.detach(), norm, skipped, logs)
        self._critic_grad(True)
        # A step with any skipped update extends the streak, a clean one resets it (on the
        # device: the loop reads it at log and checkpoint steps only).
        any_skipped = torch.maximum(*skips) if len(skips) == 2 else torch.stack(skips).amax()
        torch.addcmul(any_skipped, self.skipped_in_a_row, any_skipped, out=self.skipped_in_a_row)
        for average in (self.ema, self.mirror):  # skipped together with the G step
            if average is not None:
                with self.execution.full_tensors("generator") as current:
                    average.update(step + 1, skipped, current)
        if self.augmenter is not None:
            self.augmenter.adjust(step)
        return d, g

    def _critic_grad(self, enabled: bool) -> None:
        """Freeze or unfreeze D's parameters (a cached list: no module traversal per step)."""
        for p in self._critic_params:
            p.requires_grad_(enabled)

    def _regularize(self, loss: torch.Tensor, phase: str, step: int, *tensors):
        """``loss`` plus the phase's regularizer terms due at ``step``, and their logs."""
        logs: dict[str, torch.Tensor] = {}
        ctx = None
        for name, every, regularizer in self.regularizers:
            if regularizer.phase != phase or step % every:
                continue
            if ctx is None:  # built only when a term is due (launch-bound steps feel it)
                ctx = RegularizerContext(phase, step, self.G, self.critic, *tensors)
            term, reg_logs = regularizer(ctx)
            loss = loss + every * term  # lazy regularization keeps the term's average weight
            logs[name] = term.detach()
            logs.update({f"{name}/{k}": v for k, v in reg_logs.items()})
        return loss, logs

    def _update(
        self, model, loss: torch.Tensor, measure: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``model``'s (``self.G``'s or ``self.D``'s) update through the execution: backward,
        the non-finite check (a non-finite loss or gradient on any rank skips the update on
        every rank), optional clipping and the optimizer step. Returns the gradient norm (None
        when neither ``measure`` nor clipping asks for it) and the skip flag (device tensors).
        """
        role = "discriminator" if model is self.D else "generator"
        norm, found_inf = self.execution.update(role, loss, measure)
        self.skipped += found_inf
        return norm, found_inf

    # ------------------------------------------------------------------ the loop

    def fit(self) -> Path | None:
        """Train from the current step to ``train.steps``; return the export path.

        Raises :class:`~ganforge.errors.TrainingStopped` after Ctrl-C or SIGTERM (once the
        checkpoint of the last complete step is written) or after
        ``train.max_skipped_in_a_row`` skipped steps in a row.
        """
        acc = self.acc
        main = acc.is_main_process
        self._own_run_dir()
        try:
            self.start_message += state.take_run_dir(self)
            if main:
                self._prepare_run_dir()
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
            raise GanforgeError(self._write_failure(err)) from None
        finally:
            tracking.finish(acc)  # flushed and closed on Ctrl-C and errors too
            self.lock.release()  # the run directory is free again, however the run ended

    def _loop(self) -> Path | None:
        from tqdm.auto import tqdm

        acc, train = self.acc, self.recipe.section("train")
        main = acc.is_main_process
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            disable=not main,
            dynamic_ncols=True,
            unit="step",
            mininterval=0.5,
        )
        last_time, last_step = time.perf_counter(), self.step
        started, first_step, watch = last_time, self.step, Watch()
        eval_every, save_every = self.recipe.get("eval.every"), train["checkpoint_every"]
        with bar, StopSignals(acc.num_processes, announce=main) as stop:
            while self.step < self.steps:
                upcoming = self.step + 1
                logging = upcoming % train["log_every"] == 0 or upcoming == self.steps
                d, g = self.train_step(self.step, measure=logging)
                self.step = upcoming
                bar.update(1)
                saving = (save_every and self.step % save_every == 0) or self.step == self.steps
                if logging:
                    now = time.perf_counter()
                    seen = (self.step - last_step) * self.n_critic * self.batch_size
                    values = self._log_values(d, g, seen / max(now - last_time, 1e-9))
                    last_time, last_step = now, self.step
                    if main:
                        bar.set_postfix(
                            d=f"{values['d_loss']:.3f}",
                            g=f"{values['g_loss']:.3f}",
                            img_s=f"{values['images_per_s']:.0f}",
                        )
                        append_jsonl(self.run_dir / "metrics.jsonl", values)
                        for warning in watch.check(values):
                            bar.write(warning)
                        self.last_log = values
                        self._call_plugins(self.plugins.log, self.info, self.step, values)
                        tracking.log(acc, values)
                if logging or saving:  # host reads happen at these steps anyway
                    self._check_skipped_in_a_row(train["max_skipped_in_a_row"])
                if main and (self.step % train["sample_every"] == 0 or self.step == self.steps):
                    tracking.log_image(acc, "samples", self.save_samples(), self.step)
                if eval_every and (self.step % eval_every == 0 or self.step == self.steps):
                    self.log_evaluation()
                checkpoint = self.save_checkpoint() if saving else None
                # A stop asked for during the last step lets the run finish (export, report);
                # a failed plugin stops it there too, its checkpoint written first.
                reason = self._stop_reason(stop, logging or saving)
                if reason == PLUGIN_FAILED or (reason and self.step < self.steps):
                    path = checkpoint if saving else self.save_checkpoint()
                    if reason == PLUGIN_FAILED:
                        raise self._plugin_stop(path)
                    raise interrupted(self.step, path, stop.requested)
        self.sync_buffers()
        export_path = self.export() if main else None
        acc.wait_for_everyone()
        if main:
            self.plugins.run_end(self.info, self.step, str(export_path) if export_path else None)
            images = (self.step - first_step) * self.n_critic * self.batch_size
            report_path = self._write_report()
            self._print_summary(
                time.perf_counter() - started, first_step, images, export_path, report_path
            )
        tracking.finish(acc)
        acc.end_training()
        return export_path

    def _write_failure(self, err: OSError) -> str:
        """What a failed write during training says: where, why, and what is intact."""
        return (
            f"could not write in the run directory {self.run_dir}: {err}; "
            f"{newest_checkpoint(self.run_dir, 'is intact')}. Free space (or fix the folder) "
            "and run the same command again to continue"
        )

    def _stop_reason(self, stop: StopSignals, reading: bool) -> float:
        """Whether to stop after this step: 0 no, 1 for Ctrl-C or SIGTERM, PLUGIN_FAILED for a
        lifecycle hook that raised. Several processes decide together, on steps where the
        loop reads values anyway (``reading``), so that every process writes the same
        checkpoint: any process that got the signal (or a plugin's failure: the main process
        calls them) stops them all."""
        local = float(stop.requested is not None)
        if self._plugin_failure is not None:
            local = PLUGIN_FAILED
        if self.acc.num_processes == 1:
            return local
        if not reading:
            return 0.0
        flag = torch.tensor(local, device=self.acc.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return flag.item()

    def _call_plugins(self, hook, *args) -> None:
        """A lifecycle hook during training: a plugin that fails stops the run at this step,
        after its checkpoint (see ``_stop_reason``), instead of losing the steps since."""
        if self._plugin_failure is None:
            try:
                hook(*args)
            except PluginError as err:
                self._plugin_failure = err

    def _plugin_stop(self, path: Path | None) -> PluginError:
        failure = self._plugin_failure or "a plugin failed on the main process"
        return PluginError(
            f"{failure}\nThe run stopped at step {self.step}; its checkpoint was written "
            f"first ({path or 'by the main process'}), and the same command continues it."
        )

    def _prepare_run_dir(self) -> None:
        try:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GanforgeError(
                f"cannot create the run directory {self.run_dir} (run.out_dir): "
                f"{err.strerror or err}"
            ) from None
        # The log continues from the starting step: no step is logged twice. Read first: a
        # damaged log stops the run before anything is written.
        cut_jsonl(self.run_dir / "metrics.jsonl", self.step)
        write_text(self.run_dir / "recipe.toml", self.recipe.to_toml())

    def _check_skipped_in_a_row(self, limit: int) -> None:
        """Stop when the last ``limit`` steps were all skipped (0: never stop). The counter is
        the same on every process (the skip flags are all-reduced), so all stop together."""
        if not limit:
            return
        in_a_row = int(self.skipped_in_a_row.item())
        if in_a_row >= limit:
            self.acc.end_training()
            raise too_many_skipped(self.step, in_a_row, limit, self.run_dir)

    def _log_values(self, d: Phase, g: Phase, images_per_s: float) -> dict[str, Any]:
        named = {
            "d_loss": d.loss,
            "g_loss": g.loss,
            "d_real": d.real.logits.detach().float().mean(),
            "d_fake": d.fake.logits.detach().float().mean(),
            # The critic's sign accuracy: reals scored above 0, fakes below (equal counts).
            "d_accuracy": torch.cat(
                [(d.real.logits.detach() > 0).flatten(), (d.fake.logits.detach() < 0).flatten()]
            )
            .float()
            .mean(),
            "grad_norm_d": d.grad_norm,
            "grad_norm_g": g.grad_norm,
            **{f"reg/{k}": v for k, v in {**d.logs, **g.logs}.items()},
            **(self.augmenter.logs() if self.augmenter is not None else {}),
        }
        stacked = torch.stack([v.detach().float().reshape(()) for v in named.values()])
        stacked = self.acc.reduce(stacked, reduction="mean")  # one host read for all values
        values = dict(zip(named, stacked.tolist(), strict=True))
        return {
            "step": self.step,
            **values,
            "lr_g": self.execution.param_groups("generator")[0]["lr"],
            "lr_d": self.execution.param_groups("discriminator")[0]["lr"],
            "skipped_steps": int(self.skipped.item()),
            "images_per_s": images_per_s,
            "kimg": self.step * self.n_critic * self.batch_size / 1000,
        }

    def sync_buffers(self) -> None:
        """Give every process the main process's buffers (batch-norm statistics, regularizers'
        running means).

        Buffers are not broadcast during the step (see ``make_accelerator``), so each rank's
        running statistics follow its own shard. Before each checkpoint and the export they are
        made identical, the same way in every run, so what is saved is every rank's state.
        """
        copies = [self.mirror.module] if self.mirror is not None else []
        broadcast_buffers([*state.modules(self).values(), *copies], self.acc)

    def save_checkpoint(self) -> Path | None:
        """Write the whole training state (every process calls it; the main one writes)."""
        self.sync_buffers()
        path = state.save_checkpoint(self)
        if path is not None:
            self._call_plugins(self.plugins.checkpoint, self.info, self.step, str(path))
        return path
