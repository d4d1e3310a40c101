"""What a run leaves behind besides checkpoints: sample grids, evaluations, the export, the
report and the end-of-run summary.

:class:`RunOutputs` is a part of :class:`ganforge.trainer.Trainer`, kept apart so that the
trainer's module stays about the step and the loop. It reads the trainer's models, data,
recipe and run directory, and changes no training state: sampling and evaluation use their
own seeded streams and eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ganforge import tracking
from ganforge.averaging import with_standing_statistics
from ganforge.clusters import draw_inputs, draw_labels
from ganforge.components import grid_labels, sample_latents
from ganforge.data import open_store
from ganforge.diagnostics import summary
from ganforge.export import export_generator, export_metadata
from ganforge.report import write_report
from ganforge.runfiles import append_jsonl, save_grid, save_scatter


class RunOutputs:
    """Sampling, evaluation, export and the end-of-run report, for the trainer."""

    def _write_report(self) -> Path | None:
        """``curves.png`` and ``report.html`` (a few PNG reads); a failure to write them is a
        warning, not a lost run: the export and checkpoint are already on disk."""
        try:
            return write_report(self.run_dir)
        except OSError as err:
            self.acc.print(f"ganforge: warning: no report written: {err}")
            return None

    def _print_summary(
        self,
        wall_s: float,
        first_step: int,
        images: int,
        export_path: Path | None,
        report_path: Path | None,
    ) -> None:
        samples = self.run_dir / "samples"
        text = summary(
            wall_s=wall_s,
            first_step=first_step,
            last_step=self.step,
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

    def _sampling_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed latent batch (and labels: a row per class, or clusters drawn as the data
        has them) every sample grid uses."""
        count = self.recipe.get("train.sample_count")
        rng = torch.Generator().manual_seed(self.seed + 2**31 - 1)  # never the training stream
        z = sample_latents(self.generator, count, rng, self.acc.device)
        if not self.num_classes:
            return z, None
        if self.label_prior is not None:
            y = draw_labels(count, self.num_classes, self.label_prior, rng)
        else:
            y = grid_labels(count, self.num_classes)
        return z, y.to(self.acc.device)

    @property
    def sampling_generator(self) -> nn.Module:
        """What samples and the export come from: the EMA generator when enabled, else G (its
        whole copy where the backend shards G)."""
        for average in (self.ema, self.mirror):
            if average is not None:
                return average.module
        return self.generator

    def standing_draw(self, n: int, rng: torch.Generator):
        """Inputs for standing statistics, drawn as evaluation and ``generate`` draw them:
        labels uniform over the classes, or clusters with their share of the data."""
        latents = partial(sample_latents, self.sampling_generator, device=self.acc.device)
        z, y = draw_inputs(n, self.num_classes, self.label_prior, latents, rng)
        return z, None if y is None else y.to(self.acc.device)

    @property
    def standing_stats(self) -> dict[str, int] | None:
        """``ema.standing_stats`` batches of ``train.batch_size`` samples (on every process alike),
        or None."""
        batches = self.recipe.get("ema.standing_stats") if self.ema is not None else 0
        return {"batches": batches, "batch_size": self.batch_size} if batches else None

    @contextmanager
    def sampling(self) -> Iterator[nn.Module]:
        """The sampling generator in eval mode for the block, with standing batch-norm
        statistics when ``ema.standing_stats`` is set; every training state as it was after."""
        standing = self.standing_stats or {"batches": 0, "batch_size": 0}
        with (
            torch.no_grad(),
            with_standing_statistics(
                self.sampling_generator, self.standing_draw, **standing
            ) as generator,
        ):
            yield generator

    def generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Samples of the sampling generator as the export will give them."""
        with self.sampling() as generator:
            return generator(z, y)

    def save_samples(self) -> Path:
        """A grid of the fixed latent batch (a scatter plot over the data for point data)."""
        z, y = self._sampling_inputs()
        samples = self.generate(z, y)
        path = self.run_dir / "samples" / f"step_{self.step:06d}.png"
        if not self.data.is_image:
            reference = torch.from_numpy(np.asarray(self.data.images[: 4 * len(z)]))
            return save_scatter(path, samples, reference)
        rows = self.num_classes and self.label_prior is None  # a row per class
        nrow = max(len(z) // self.num_classes, 1) if rows else None
        return save_grid(path, samples, nrow)

    def evaluate(self) -> dict[str, float] | None:
        """The ``[eval]`` metrics of the sampling generator now (every process contributes
        samples; the main process gets the values, the others None).

        Samples come from their own seeded streams, in eval mode: no training state moves.
        """
        from ganforge import evaluation

        cfg, acc = self.recipe.section("eval"), self.acc
        if self._evaluation is None:
            self._evaluation = self._prepare_evaluation()
        # Every process samples with the main one's batch-norm statistics, as the export will
        # (running statistics never enter a train-mode forward: training is unchanged).
        self.sync_buffers()
        per_process = -(-cfg["num"] // acc.num_processes)
        with self.sampling() as generator:
            batches = evaluation.generated_batches(
                lambda z, y: generator(z, None if y is None else y.to(acc.device)),
                lambda n, rng: sample_latents(self.generator, n, rng, acc.device),
                per_process,
                self.num_classes,
                seed=self.seed + 1_000_003 * (acc.process_index + 1),
                prior=self.label_prior,
            )
            fake = self._evaluation.features_of(batches, keep_samples=not self.data.is_image)
        fake = evaluation.gather(fake, acc, cfg["num"])
        return self._evaluation.score(fake) if acc.is_main_process else None

    def _prepare_evaluation(self):
        """The ``[eval]`` extractor, metrics and real-data features, built before training so
        that a missing weight file or an impossible metric stops the run at once."""
        from ganforge import evaluation

        cfg, acc = self.recipe.section("eval"), self.acc
        # The main process first: an extractor trained or converted at first use is written
        # to the cache once, and the other processes read it.
        source, real, train = self.data_source, self.loaded_data, None
        with acc.main_process_first():
            held_out = source.scored_against()
            if held_out is not source:  # the training data's own held-out split
                train = source
                source, real = held_out, open_store(held_out, self.recipe.get("data.resolution"))
            prepared = evaluation.prepare(
                self.registry,
                real,  # with the data's own labels (or none), not clusters
                source.fingerprint,
                source.metadata,
                num=cfg["num"],
                extractor=cfg["extractor"] or None,
                extractor_options=cfg["extractor_options"],
                metrics=cfg["metrics"] or None,
                # Clusters are not classes of the data: scored as an unconditional model.
                conditional=self.num_classes > 0 and self.label_prior is None,
                device=acc.device,
                seed=self.seed,
                with_real=acc.is_main_process,
                train=train,
            )
        if prepared.ceiling:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in prepared.ceiling.items())
            real_side = f"real data ({prepared.ceiling_source})"
            acc.print(f"ganforge: eval of {real_side}, the ceiling: {shown}")
        return prepared

    def log_evaluation(self) -> None:
        values = self.evaluate()
        if values is not None:
            record = {"step": self.step, **{f"eval/{k}": v for k, v in values.items()}}
            append_jsonl(self.run_dir / "metrics.jsonl", record)
            self.plugins.log(self.info, self.step, record)
            tracking.log(self.acc, record)
            self.last_eval = record

    def export_metadata(self) -> dict[str, Any]:
        """What an export of the sampling generator says about itself (``export.py``)."""
        return export_metadata(
            self.sampling_generator,
            self.registry.get("generator", self.g_spec.name),
            dict(self.g_spec.kwargs),
            channels=self.data.channels,
            resolution=self.data.resolution,
            num_classes=self.num_classes,
            class_names=list(self.data.class_names)
            if self.num_classes and self.data.class_names
            else None,
            label_prior=self.label_prior,
            ema=self.ema is not None,
            standing_stats=self.standing_stats,
            recipe_toml=self.recipe.to_toml(),
            step=self.step,
        )

    def export(self) -> Path:
        """Write ``RUN_DIR/generator.safetensors``: the sampling generator and its metadata."""
        path = self.run_dir / "generator.safetensors"
        with self.sampling() as generator:
            return export_generator(path, generator, self.export_metadata())
