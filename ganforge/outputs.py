"""What a run leaves behind besides checkpoints: sample grids, evaluations, the export, the
report, the log records and the end-of-run summary.

:class:`RunOutputs` reads the run's parts (``builder.Parts``: models, data, classes) and
changes no training state: sampling and evaluation use their own seeded streams
(``streams.py``) and eval mode. Its only collective calls are the evaluation's (preparing it
main process first, gathering every process's samples); the trainer makes every process's
buffers identical before it (``state.sync_buffers``). Every record it writes reaches
plugins through the run's :class:`~ganforge.stopping.LifecycleHooks`, under the same failure
rule as the training log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ganforge import paired, tracking
from ganforge.averaging import with_standing_statistics
from ganforge.clusters import draw_inputs, draw_labels
from ganforge.components import grid_labels, sample_latents
from ganforge.data import open_store
from ganforge.diagnostics import summary
from ganforge.export import export_generator, export_metadata
from ganforge.report import write_report
from ganforge.runfiles import append_jsonl, save_grid, save_scatter
from ganforge.streams import stream_seed

if TYPE_CHECKING:
    from ganforge.builder import Parts
    from ganforge.recipe import Recipe
    from ganforge.registry import Registry
    from ganforge.stopping import LifecycleHooks


class RunOutputs:
    """Sampling, evaluation, export, the log records and the end-of-run report of a run."""

    def __init__(self, parts: Parts, recipe: Recipe, accelerator, registry: Registry):
        self.parts, self.recipe, self.acc, self.registry = parts, recipe, accelerator, registry
        self.run_dir, self.seed = recipe.run_dir, recipe.get("run.seed")
        self.batch_size = recipe.get("train.batch_size")
        self.hooks: LifecycleHooks | None = None  # set once the run starts
        # The newest log and eval records, for the end-of-run summary (main process).
        self.last_log: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self._evaluation = None  # the prepared [eval] (extractor, metrics, real features)

    # ------------------------------------------------------------------ records

    def record(self, values: dict[str, Any], *, evaluation: bool = False) -> None:
        """A log record (main process): a line of ``metrics.jsonl``, the plugins' ``ganforge_log``
        and the trackers'."""
        append_jsonl(self.run_dir / "metrics.jsonl", values)
        if self.hooks is not None:
            self.hooks.log(values["step"], values)
        tracking.log(self.acc, values)
        if evaluation:
            self.last_eval = values
        else:
            self.last_log = values

    def write_report(self) -> Path | None:
        """``curves.png`` and ``report.html`` (a few PNG reads); a failure to write them is a
        warning, not a lost run: the export and checkpoint are already on disk."""
        try:
            return write_report(self.run_dir)
        except OSError as err:
            self.acc.print(f"ganforge: warning: no report written: {err}")
            return None

    def print_summary(
        self,
        wall_s: float,
        steps: tuple[int, int],
        images: int,
        export_path: Path | None,
        report_path: Path | None,
    ) -> None:
        """The end-of-run summary: ``steps`` (first, last) trained in ``wall_s`` seconds."""
        samples = self.run_dir / "samples"
        text = summary(
            wall_s=wall_s,
            first_step=steps[0],
            last_step=steps[1],
            images=images,
            last_log=self.last_log,
            last_eval=self.last_eval,
            paths={
                "export": export_path,
                "samples": samples if any(samples.glob("*.png")) else None,
                "metrics": self.run_dir / "metrics.jsonl",
                "curves": report_path and report_path.with_name("curves.png"),
                "report": report_path,
                "tracker logs": tracking.local_logs(self.acc, self.run_dir),
            },
        )
        self.acc.print(text)

    # ------------------------------------------------------------------ samples

    def _sampling_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed latent batch (and labels: a row per class, or clusters drawn as the data
        has them) every sample grid uses."""
        parts, count = self.parts, self.recipe.get("train.sample_count")
        rng = torch.Generator().manual_seed(stream_seed("samples", self.seed))
        z = sample_latents(parts.generator, count, rng, self.acc.device)
        if not parts.num_classes:
            return z, None
        if parts.label_prior is not None:
            y = draw_labels(count, parts.num_classes, parts.label_prior, rng)
        else:
            y = grid_labels(count, parts.num_classes)
        return z, y.to(self.acc.device)

    def standing_draw(self, n: int, rng: torch.Generator):
        """Inputs for standing statistics, drawn as evaluation and ``generate`` draw them:
        labels uniform over the classes, or clusters with their share of the data."""
        parts = self.parts
        latents = partial(sample_latents, parts.sampling_generator, device=self.acc.device)
        z, y = draw_inputs(n, parts.num_classes, parts.label_prior, latents, rng)
        return z, None if y is None else y.to(self.acc.device)

    @property
    def standing_stats(self) -> dict[str, int] | None:
        """``ema.standing_stats`` batches of ``train.batch_size`` samples (on every process alike),
        or None."""
        batches = self.recipe.get("ema.standing_stats") if self.parts.ema is not None else 0
        return {"batches": batches, "batch_size": self.batch_size} if batches else None

    @contextmanager
    def sampling(self) -> Iterator[nn.Module]:
        """The sampling generator in eval mode for the block, with standing batch-norm
        statistics when ``ema.standing_stats`` is set; every training state as it was after."""
        standing = self.standing_stats or {"batches": 0, "batch_size": 0}
        with (
            torch.no_grad(),
            with_standing_statistics(
                self.parts.sampling_generator, self.standing_draw, **standing
            ) as generator,
        ):
            yield generator

    def generate(
        self, z: torch.Tensor, y: torch.Tensor | None, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Samples of the sampling generator as the export will give them (``source``: its
        input, for an input-taking generator)."""
        extra = {} if source is None else {"source": source}
        with self.sampling() as generator:
            return generator(z, y, **extra)

    def save_samples(self, step: int) -> Path:
        """A grid of the fixed latent batch (a scatter plot over the data for point data); for
        an input-taking generator, triplets of input | output | target of fixed samples."""
        parts = self.parts
        z, y = self._sampling_inputs()
        path = self.run_dir / "samples" / f"step_{step:06d}.png"
        if parts.input is not None:
            seed = stream_seed("samples", self.seed)
            source, target = paired.fixed_pairs(
                parts.input, parts.data, len(z), seed, self.acc.device
            )
            y = None if y is None else y[: len(target)]
            samples = self.generate(z[: len(target)], y, source)
            triplets = paired.triplets(source, samples, target)
            return save_grid(path, triplets, nrow=3 * min(8, len(target)))
        samples = self.generate(z, y)
        if not parts.data.is_image:
            reference = torch.from_numpy(np.asarray(parts.data.images[: 4 * len(z)]))
            return save_scatter(path, samples, reference)
        rows = parts.num_classes and parts.label_prior is None  # a row per class
        nrow = max(len(z) // parts.num_classes, 1) if rows else None
        return save_grid(path, samples, nrow)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float] | None:
        """*Collective.* The ``[eval]`` metrics of the sampling generator now (every process
        contributes samples; the main process gets the values, the others None). Every process
        must hold the main process's buffers (``state.sync_buffers``): they sample with the
        batch-norm statistics the export will have.

        Samples come from their own seeded streams, in eval mode: no training state moves.
        """
        from ganforge import evaluation

        cfg, acc, parts = self.recipe.section("eval"), self.acc, self.parts
        if self._evaluation is None:
            self.prepare_evaluation()
        per_process = -(-cfg["num"] // acc.num_processes)
        if parts.input is not None:
            return self._evaluate_pairs(per_process)
        with self.sampling() as generator:
            batches = evaluation.generated_batches(
                lambda z, y: generator(z, None if y is None else y.to(acc.device)),
                lambda n, rng: sample_latents(parts.generator, n, rng, acc.device),
                per_process,
                parts.num_classes,
                seed=stream_seed("evaluation", self.seed, acc.process_index),
                prior=parts.label_prior,
            )
            fake = self._evaluation.features_of(batches, keep_samples=not parts.data.is_image)
        fake = evaluation.gather(fake, acc, cfg["num"])
        return self._evaluation.score(fake) if acc.is_main_process else None

    def _evaluate_pairs(self, per_process: int) -> dict[str, float] | None:
        """*Collective.* The metrics of an input-taking generator: its outputs for the inputs
        made from the held-out images (this process's share, in order) scored against those
        images, plus the PSNR and SSIM of each output against its own target."""
        from ganforge import evaluation

        cfg, acc, parts = self.recipe.section("eval"), self.acc, self.parts
        targets = self._evaluation_targets
        first = acc.process_index * per_process
        indices = (first + np.arange(per_process)) % len(targets)
        seed = stream_seed("evaluation", self.seed)
        with self.sampling() as generator:
            fake, scores = paired.score_outputs(
                self._evaluation,
                lambda source: generator(self._eval_latents(len(source)), None, source=source),
                parts.input,
                targets,
                indices,
                seed + first,
                acc.device,
            )
        fake = evaluation.gather(fake, acc, cfg["num"])
        pairs = {
            name: acc.gather(v.to(acc.device)).cpu()[: cfg["num"]] for name, v in scores.items()
        }
        if not acc.is_main_process:
            return None
        return {**self._evaluation.score(fake), **paired.PairScores.means(pairs)}

    def _eval_latents(self, n: int) -> torch.Tensor:
        """Latents for an input-taking generator's evaluation (none where it takes no noise)."""
        rng = torch.Generator().manual_seed(stream_seed("evaluation", self.seed, 1))
        return sample_latents(self.parts.generator, n, rng, self.acc.device)

    def prepare_evaluation(self) -> None:
        """The ``[eval]`` extractor, metrics and real-data features, built before training so
        that a missing weight file or an impossible metric stops the run at once."""
        from ganforge import evaluation

        cfg, acc, parts = self.recipe.section("eval"), self.acc, self.parts
        # The main process first: an extractor trained or converted at first use is written
        # to the cache once, and the other processes read it.
        source, real, train = parts.source, parts.loaded, None
        with acc.main_process_first():
            held_out = source.scored_against()
            if held_out is not source:  # the training data's own held-out split
                train = source
                source, real = held_out, open_store(held_out, self.recipe.get("data.resolution"))
            self._evaluation_targets = real  # an input-taking G's inputs are made from them
            prepared = evaluation.prepare(
                self.registry,
                real,  # with the data's own labels (or none), not clusters
                source.fingerprint,
                source.metadata,
                num=cfg["num"],
                extractor=cfg["extractor"] or None,
                extractor_options=cfg["extractor_options"],
                metrics=cfg["metrics"] or None,
                # Clusters are not classes of the data: scored as an unconditional model. An
                # input-taking generator's outputs have their targets' classes.
                conditional=(parts.num_classes > 0 and parts.label_prior is None)
                or (parts.input is not None and real.num_classes > 0),
                device=acc.device,
                seed=self.seed,
                with_real=acc.is_main_process,
                train=train,
            )
        if prepared.ceiling:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in prepared.ceiling.items())
            real_side = f"real data ({prepared.ceiling_source})"
            acc.print(f"ganforge: eval of {real_side}, the ceiling: {shown}")
        self._evaluation = prepared

    def log_evaluation(self, step: int) -> None:
        """*Collective.* Evaluate and record the values (main process) as ``eval/NAME``."""
        values = self.evaluate()
        if values is not None:
            self.record(
                {"step": step, **{f"eval/{k}": v for k, v in values.items()}}, evaluation=True
            )

    # ------------------------------------------------------------------ export

    def export_metadata(self, step: int) -> dict[str, Any]:
        """What an export of the sampling generator at ``step`` says about itself
        (``export.py``)."""
        parts = self.parts
        return export_metadata(
            parts.sampling_generator,
            self.registry.get("generator", parts.g_spec.name),
            dict(parts.g_spec.kwargs),
            channels=parts.data.channels,
            resolution=parts.data.resolution,
            num_classes=parts.num_classes,
            class_names=list(parts.data.class_names)
            if parts.num_classes and parts.data.class_names
            else None,
            label_prior=parts.label_prior,
            ema=parts.ema is not None,
            standing_stats=self.standing_stats,
            recipe_toml=self.recipe.to_toml(),
            step=step,
            native_crop=parts.source.metadata.get("native_crop"),
            input=self._input_metadata(),
        )

    def _input_metadata(self) -> dict[str, Any] | None:
        """What an export records of its generator's input: the registered input that made
        it from an image (rebuilt by ``generate --input`` and ``eval``) and its shape."""
        if self.parts.input is None:
            return None
        spec = self.recipe.component("input")
        entry = self.registry.get("input", spec.name)
        channels, resolution = self.parts.input_shape
        return {
            "name": spec.name,
            "kwargs": dict(spec.kwargs),
            "plugin": entry.plugin,
            "distribution": entry.distribution,
            "version": entry.version,
            "channels": channels,
            "resolution": resolution,
        }

    def export(self, step: int) -> Path:
        """Write ``RUN_DIR/generator.safetensors``: the sampling generator and its metadata."""
        path = self.run_dir / "generator.safetensors"
        with self.sampling() as generator:
            return export_generator(path, generator, self.export_metadata(step))
