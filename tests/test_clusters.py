"""Self-conditioning (``data.clusters``): k-means clusters of the data condition G and D in
place of labels, are checkpointed with the run, and are drawn with their share of the data
wherever the generator is sampled (training evaluation, exports, ``generate``, ``eval``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ganforge.builder
from ganforge.cli import main
from ganforge.clusters import cluster_labels, draw_labels, label_prior
from ganforge.data import ImageData
from ganforge.errors import DataError, GanforgeError, RecipeError
from ganforge.export import load_generator, write_export
from ganforge.plugins import Plugins
from ganforge.sampling import evaluate_model, write_samples
from ganforge.trainer import read_metrics

# Three classes of blobs (a disc per quadrant, a colour per class): clusters=3 ignores the
# labels, and k-means should find the classes anyway.
CLUSTERED = ("data.num_classes=3", "data.size=48", "data.clusters=3")


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings group the samples identically (numbers may differ)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# ------------------------------------------------------------------------------ clustering


def test_clusters_find_separated_modes_and_are_numbered_by_size():
    rng = np.random.default_rng(0)
    sizes = [50, 10, 30, 20, 40]
    centres = [(10 * np.cos(a), 10 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 6)[:5]]
    modes = np.repeat(np.arange(5), sizes)
    points = np.asarray(centres)[modes] + rng.normal(0, 0.1, (len(modes), 2))
    data = ImageData(points.astype(np.float32))
    labels = cluster_labels(data, 5, seed=0)
    assert labels.dtype == np.int64 and same_partition(labels, modes)
    assert np.bincount(labels).tolist() == sorted(sizes, reverse=True)  # cluster 0 the largest
    assert np.array_equal(cluster_labels(data, 5, seed=0), labels)
    assert np.array_equal(cluster_labels(data, 5, seed=1), labels)  # separated: one answer
    assert label_prior(labels, 5) == [s / 150 for s in sorted(sizes, reverse=True)]


def test_digit_clusters_follow_the_digit_classes():
    from ganforge_plugins.digits import digits_source

    data = digits_source(resolution=32).load()
    labels = cluster_labels(data, 20, seed=0)
    # Each cluster's most common digit, over all digits: 0.90 when measured.
    purity = sum(np.bincount(data.labels[labels == c]).max() for c in range(20)) / len(labels)
    assert purity > 0.85
    assert set(labels.tolist()) == set(range(20))


def test_impossible_clusterings_are_data_errors():
    few = ImageData(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(DataError, match="only 3 samples"):
        cluster_labels(few, 4, seed=0)
    repeated = ImageData(np.repeat(np.eye(2, dtype=np.float32), 5, axis=0))
    with pytest.raises(DataError, match="fewer distinct samples"):
        cluster_labels(repeated, 3, seed=0)


def test_more_clusters_than_samples_stops_the_run_clearly(tiny):
    with pytest.raises(DataError, match="data.clusters = 100, but the data has only 48 samples"):
        tiny("data.size=48", "data.clusters=100")


def test_labels_are_drawn_with_the_prior_or_else_uniformly():
    rng = torch.Generator().manual_seed(0)
    drawn = draw_labels(20_000, 4, [0.7, 0.2, 0.1, 0.0], rng)
    shares = torch.bincount(drawn, minlength=4) / len(drawn)
    assert torch.allclose(shares, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.015)
    uniform = draw_labels(20_000, 4, None, rng)
    assert torch.allclose(torch.bincount(uniform) / 20_000, torch.full((4,), 0.25), atol=0.015)


# ------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize(
    "overrides, where, message",
    [
        (("data.clusters=3", "data.conditional=true"), "data.clusters", "labels or clusters"),
        (("data.clusters=1",), "data.clusters", "must be 0 or 2..10000"),
        (
            ("data={name='toy2d'}", "data.clusters=8", "generator.name=mlp"),
            "generator.name",
            "cannot condition on labels, but data.clusters = 8",
        ),
    ],
    ids=["with labels", "one cluster", "unconditional model"],
)
def test_cluster_mistakes_are_recipe_errors(tiny, overrides, where, message):
    with pytest.raises(RecipeError) as caught:
        tiny(*overrides)
    assert any(w == where and message in m for w, m in caught.value.problems), caught.value


# ------------------------------------------------------------------------------ a clustered run


def test_a_clustered_run_conditions_on_clusters_and_exports_their_share(tiny):
    from test_eval import ProbePlugin

    trainer = tiny(
        *CLUSTERED,
        "train.steps=2",
        "train.checkpoint_every=2",
        "eval.every=2",
        "eval.num=24",
        "eval.extractor=probe",
        extra=[("probe", ProbePlugin())],
    )
    classes = trainer.parts.loaded.labels
    clusters = trainer.parts.data.labels
    assert trainer.parts.num_classes == 3 and same_partition(clusters, classes)
    seen = []
    trainer.generator.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    export = trainer.fit()

    assert all(y is not None for y in seen)  # every forward of G was conditioned
    prior = label_prior(clusters, 3)
    _, info = load_generator(export)
    assert info.num_classes == 3 and info.label_prior == pytest.approx(prior)
    assert info.class_names == ["cluster0", "cluster1", "cluster2"]
    saved = load_file(str(trainer.run_dir / "checkpoints" / "step_000002" / "data.safetensors"))
    assert np.array_equal(saved["cluster_labels"].numpy(), clusters)
    # Clusters are not the data's classes: scored as an unconditional model would be.
    record = [r for r in read_metrics(trainer.run_dir) if "eval/fd" in r][0]
    assert "eval/is" in record
    assert not any(k.startswith(("eval/intra_fd", "eval/accuracy")) for k in record)
    result = evaluate_model(
        export,
        str(trainer.run_dir / "recipe.toml"),
        num=24,
        extractor="probe",
        plugins=Plugins(extra=[("probe", ProbePlugin())]),
    )
    assert "fd" in result["metrics"]["generated"]
    assert not any(k.startswith(("intra_fd", "accuracy")) for k in result["metrics"]["generated"])
    # Asked for, a per-class metric does not pair clusters with the data's classes.
    with pytest.raises(GanforgeError, match="'intra_fd' is for conditional models on labelled"):
        evaluate_model(
            export,
            str(trainer.run_dir / "recipe.toml"),
            num=24,
            metrics=["intra_fd"],
            extractor="probe",
            plugins=Plugins(extra=[("probe", ProbePlugin())]),
        )


def test_a_resume_continues_on_the_checkpoints_clusters(tiny, tmp_path, monkeypatch):
    straight = tiny(*CLUSTERED, "train.steps=4", f"run.out_dir={tmp_path / 'straight'}")
    straight.fit()
    first = tiny(*CLUSTERED, "train.steps=2")
    first.fit()

    # k-means elsewhere (another CPU, another scikit-learn) may number clusters differently,
    # and on large data it takes minutes: a resume (or init_from) takes the checkpoint's.
    def k_means_again(*args):
        raise AssertionError("clustered again")

    monkeypatch.setattr(ganforge.builder, "cluster_labels", k_means_again)
    resumed = tiny(*CLUSTERED, "train.steps=4")
    assert resumed.step == 2
    assert np.array_equal(resumed.parts.data.labels, straight.parts.data.labels)
    assert torch.equal(resumed.batches.labels, torch.from_numpy(straight.parts.data.labels))
    resumed.fit()
    for model in ("generator", "discriminator"):
        a, b = getattr(resumed, model).state_dict(), getattr(straight, model).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), model
    started = tiny(
        *CLUSTERED,
        f"run.out_dir={tmp_path / 'started'}",
        f"train.init_from={first.run_dir / 'checkpoints' / 'step_000002'}",
    )
    assert started.step == 0 and np.array_equal(started.parts.data.labels, first.parts.data.labels)


@pytest.fixture
def clustered_export(tiny):
    return tiny(*CLUSTERED, "train.steps=1").fit()


def with_prior(export, out, prior):
    with safe_open(str(export), "pt") as f:
        meta = json.loads(f.metadata()["ganforge"])
    meta["label_prior"] = prior
    return write_export(out, load_file(str(export)), meta)


def test_generate_draws_clusters_with_their_share(clustered_export, tmp_path):
    only_two = with_prior(clustered_export, tmp_path / "two.safetensors", [0.0, 0.0, 1.0])
    drawn = write_samples(only_two, num=6, out=tmp_path / "drawn.npy")[0]
    chosen = write_samples(clustered_export, num=6, out=tmp_path / "chosen.npy", label="2")[0]
    assert np.array_equal(np.load(drawn), np.load(chosen))  # same latents, every one cluster 2
    assert main(["generate", str(clustered_export), "--num", "4", "--out", "g.png"]) == 0


def test_a_damaged_label_prior_is_one_clear_error(clustered_export, tmp_path, capsys):
    bad = with_prior(clustered_export, tmp_path / "bad.safetensors", [0.5, 0.6])
    assert main(["generate", str(bad), "--out", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "damaged ganforge metadata" in err and "label_prior" in err
    assert "Traceback" not in err
