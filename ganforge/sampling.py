"""Using an export without its recipe: ``ganforge generate`` (samples written as images or
arrays) and ``ganforge eval`` (metrics against a data set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganforge.clusters import draw_labels
from ganforge.components import Input, grid_labels
from ganforge.data import to_model_range
from ganforge.errors import GanforgeError
from ganforge.export import GeneratorInfo, generate, latents_from, load_generator
from ganforge.paired import PairScores, derive, derive_pair, score_outputs
from ganforge.plugins import Plugins
from ganforge.runfiles import atomic_write, save_grid, save_scatter


def class_index(label: str, info: GeneratorInfo) -> int:
    """A class given by index or by name, checked against the export's classes."""
    if not info.num_classes:
        raise GanforgeError("--class is for conditional models; this generator has no classes")
    names = list(info.class_names or [])
    if label in names:
        return names.index(label)
    try:
        index = int(label)
    except ValueError:
        known = f": {', '.join(names)}" if names else f" (0..{info.num_classes - 1})"
        raise GanforgeError(f"unknown class {label!r}; the classes are{known}") from None
    if not 0 <= index < info.num_classes:
        raise GanforgeError(f"class {index} is out of range 0..{info.num_classes - 1}")
    return index


def chosen_classes(label: str | None, info: GeneratorInfo) -> torch.Tensor | None:
    """The classes ``--class`` names (comma-separated indices or names), or None for all."""
    if label is None:
        return None
    return torch.tensor([class_index(name.strip(), info) for name in label.split(",")])


def check_truncation(truncation: float | None, info: GeneratorInfo) -> None:
    if truncation is not None and not info.supports_truncation:
        raise GanforgeError(f"generator {info.name!r} does not support --truncation")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise GanforgeError(f"--device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GanforgeError(f"--device {name!r}: no CUDA device is available")
    try:
        if device.type == "meta":
            raise RuntimeError("holds no data")
        torch.empty(1, device=device)
    except Exception as err:  # a backend that is not built in, or not set up (privateuseone)
        raise GanforgeError(f"--device {name!r} cannot be used: {err}") from None
    return device


def native(samples: torch.Tensor, info: GeneratorInfo) -> torch.Tensor:
    """Image samples at the data's own size, without the padding training added (as is where
    the export records none)."""
    if info.native_crop is None:
        return samples
    top, left, height, width = info.native_crop
    return samples[..., top : top + height, left : left + width]


def _sample_labels(
    num: int, seed: int, label: str | None, info: GeneratorInfo
) -> tuple[torch.Tensor | None, int]:
    """The labels of ``num`` samples, and the classes a grid has a row of each for (0: none)."""
    chosen = chosen_classes(label, info)
    if chosen is not None:
        return chosen[grid_labels(num, len(chosen))], len(chosen)
    if info.label_prior is not None:  # clusters: as the data has them (rows are not classes)
        rng = torch.Generator().manual_seed(seed + 1)
        return draw_labels(num, info.num_classes, info.label_prior, rng), 0
    if info.num_classes:
        return grid_labels(num, info.num_classes), info.num_classes
    return None, 0


def write_samples(
    model: str | Path,
    *,
    num: int,
    seed: int = 0,
    out: str | Path | None = None,
    out_dir: str | Path | None = None,
    truncation: float | None = None,
    label: str | None = None,
    device: str = "cpu",
    plugins: Plugins | None = None,
    full: bool = False,
) -> list[Path]:
    """Sample ``num`` outputs of an export and write them; return the files written.

    ``out`` takes one ``.png`` (an image grid, or a scatter plot for point data) or ``.npy``
    (the samples as float32 in the generator's range); ``out_dir`` one PNG per image.
    Conditional generators sample every class in turn unless ``label`` names some
    (comma-separated: a run of samples each);
    self-conditioned ones (``data.clusters``) draw clusters with their share of the data.
    Images come at the data's own size where training padded it (``GeneratorInfo.native_crop``:
    28×28 for Fashion-MNIST trained at 32); ``full`` keeps the whole output.
    """
    if num < 1:
        raise GanforgeError(f"--num must be at least 1, not {num}")
    suffix = Path(out).suffix.lower() if out else None
    if out and suffix not in (".png", ".npy"):
        raise GanforgeError(f"--out {out}: write a .png (grid) or a .npy (array)")
    generator, info = load_generator(model, _device(device), plugins and plugins.registry)
    check_truncation(truncation, info)
    labels, classes = _sample_labels(num, seed, label, info)
    samples = generate(generator, info, num, seed, labels=labels, truncation=truncation).cpu()
    samples = samples if full else native(samples, info)

    if out_dir is not None:
        if info.output != "image":
            raise GanforgeError("--out-dir writes images; for point data use --out FILE.npy")
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            save_grid(folder / f"sample_{i:05d}.png", samples[i : i + 1], nrow=1, pad=0)
            for i in range(num)
        ]
    out = Path(out)
    if suffix == ".npy":
        array = samples.float().numpy()

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to tmp
                np.save(f, array, allow_pickle=False)

        return [atomic_write(out, save)]
    if info.output == "points":
        return [save_scatter(out, samples, samples)]
    nrow = max(num // classes, 1) if classes > 1 else None
    return [save_grid(out, samples, nrow)]


#: What the pair scores of an input-taking generator mean (``ganforge eval``).
PAIR_LEGEND = {
    "psnr": "peak signal-to-noise ratio of each output against its target, dB; higher is better",
    "ssim": "structural similarity of each output to its target (11×11 Gaussian window); "
    "higher is better, at most 1",
}

#: Image files ``generate --input FOLDER`` reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def rebuild_input(info: GeneratorInfo, registry) -> Input:
    """The input an export's generator was trained with, through the plugin registry."""
    record = info.input
    if record is None:
        raise GanforgeError(
            f"generator {info.name!r} takes latents, not an input: --input is for generators "
            "trained with an [input] (super-resolution, image-to-image, autoencoders)"
        )
    if registry.find("input", record["name"]) is None:
        where = record.get("distribution") or "the plugin that registers it"
        raise GanforgeError(
            f"the generator's input {record['name']!r} is not installed; install {where}"
        )
    return registry.build("input", record["name"], {}, dict(record["kwargs"]), Input)


def _read_image(path: Path):
    """One image file, opened (PIL), or a message naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
            return picture
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise GanforgeError(f"--input: cannot read {path}: {err}") from None


def _as_tensor(picture, channels: int) -> torch.Tensor:
    """A PIL image as 1×C×H×W in [-1, 1] (grey for 1 channel, else RGB)."""
    array = np.asarray(picture.convert("L" if channels == 1 else "RGB"))
    if array.ndim == 2:
        array = array[:, :, None]
    return to_model_range(torch.from_numpy(array.copy()).permute(2, 0, 1)[None])


def _folder_inputs(folder: Path, info: GeneratorInfo, make: Input, seed: int, device):
    """``(name, input)`` of every image in ``folder``, in name order: an image at the input's
    size is the input itself; one at the output's size is made into the input as in
    training (a downscaled or masked copy)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GanforgeError(f"--input {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    side, channels = info.input["resolution"], info.input["channels"]
    for i, path in enumerate(files):
        picture = _read_image(path)
        if picture.size == (side, side) and channels in (1, 3):
            yield path.stem, _as_tensor(picture, channels).to(device)
        elif picture.size == (info.resolution, info.resolution):
            image = _as_tensor(picture, info.channels).to(device)
            yield path.stem, derive(make, image, seed + i)
        else:
            width, height = picture.size
            raise GanforgeError(
                f"--input: {path} is {width}×{height}; the generator takes "
                f"{side}×{side} inputs, or {info.resolution}×{info.resolution} images made "
                "into inputs as in training"
            )


def write_from_inputs(
    model: str | Path,
    inputs: str,
    out_dir: str | Path,
    *,
    num: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    plugins: Plugins | None = None,
) -> list[Path]:
    """An input-taking generator's outputs, one PNG each in ``out_dir``, for ``inputs``: a
    folder of images (outputs keep their names), or a data set or recipe whose held-out
    images are made into inputs as in training (the first ``num``, named by index)."""
    plugins = plugins or Plugins()
    dev = _device(device)
    generator, info = load_generator(model, dev, plugins.registry)
    make = rebuild_input(info, plugins.registry)
    if info.output != "image":
        raise GanforgeError("--input is for generators of images")
    folder = Path(inputs)
    if folder.is_dir():
        named = _folder_inputs(folder, info, make, seed, dev)
    else:
        _, images, _, _ = _open_data(inputs, info, plugins)
        count = min(num or 64, len(images))
        stored = to_model_range(torch.from_numpy(np.array(images.images[:count]))).to(dev)
        sources, _ = derive_pair(make, stored, images, seed)
        named = ((f"{i:05d}", sources[i : i + 1]) for i in range(count))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    latent = torch.Generator().manual_seed(seed)
    written = []
    with torch.no_grad():
        for name, source in named:
            z = latents_from(info, 1, latent).to(dev)
            image = native(generator(z, None, source=source), info).cpu()
            written.append(save_grid(out / f"{name}.png", image, nrow=1, pad=0))
    return written


def _open_data(spec: str, info: GeneratorInfo, plugins: Plugins):
    """``spec`` is a recipe (its data and [eval] tables: a file or a plugin's ``PLUGIN:NAME``)
    or a registered data set's name."""
    from ganforge.data import open_store
    from ganforge.evaluation import build
    from ganforge.recipe import RECIPE_NAME, load_recipe

    registry = plugins.registry
    if spec.endswith(".toml") or RECIPE_NAME.match(spec):
        recipe = load_recipe(spec, (), registry)
        data_cfg = recipe.component("data")
        name, kwargs, evaluation = data_cfg.name, dict(data_cfg.kwargs), recipe.section("eval")
        resolution = recipe.get("data.resolution")
    else:
        name, kwargs, evaluation, resolution = spec, {}, {}, info.resolution
    if resolution != info.resolution:
        raise GanforgeError(
            f"{spec} gives {resolution}-pixel data, the generator makes {info.resolution}"
        )
    try:
        source = build(registry, "dataset", name, {"resolution": resolution, **kwargs}, "data")
        held_out = source.scored_against()
        train = source if held_out is not source else None  # the ceiling's, when needed
        return held_out, open_store(held_out, resolution), evaluation, train
    except GanforgeError as err:
        made = f"{info.resolution}-pixel images" if info.resolution else "points"
        raise GanforgeError(
            f"--data {spec} cannot give what the generator makes ({made}): {err}"
        ) from None


def _check_data(images, info: GeneratorInfo, data: str) -> bool:
    """Whether the generator is scored as conditional, after checking ``data`` (its images)
    looks like what it makes."""
    if images.is_image != (info.output == "image") or images.channels != info.channels:
        raise GanforgeError(f"{data} does not look like what the generator makes")
    # Clusters are not the data's classes: a self-conditioned model is scored as unconditional.
    conditional = info.num_classes > 0 and info.label_prior is None
    if conditional and images.num_classes != info.num_classes:
        raise GanforgeError(
            f"the generator is conditioned on {info.num_classes} classes, {data} has "
            f"{images.num_classes}"
        )
    return conditional


def _chosen_metrics(metrics: list[str] | None, eval_cfg: dict) -> dict[str, dict] | None:
    """``--metrics`` (with the recipe's options for them), else the recipe's, else None (the
    defaults)."""
    if metrics:
        return {m: eval_cfg.get("metrics", {}).get(m, {}) for m in metrics}
    return eval_cfg.get("metrics") or None


def _score_pairs(generator, info, images, evaluation, num, seed, device, plugins) -> dict:
    """The metrics of an input-taking generator's outputs for the inputs made from the first
    ``num`` held-out images, and their PSNR and SSIM against those images."""
    z = latents_from(info, 1, torch.Generator().manual_seed(seed)).to(device)
    fake, scores = score_outputs(
        evaluation,
        lambda source: generator(z.expand(len(source), *z.shape[1:]), None, source=source),
        rebuild_input(info, plugins.registry),
        images,
        np.arange(num),
        seed,
        device,
    )
    return {**evaluation.score(fake), **PairScores.means(scores)}


def evaluate_model(
    model: str | Path,
    data: str,
    *,
    num: int = 10_000,
    metrics: list[str] | None = None,
    extractor: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    plugins: Plugins | None = None,
) -> dict:
    """Metrics of an export's samples against ``data``, and of held-out real data (the
    ceiling), as a JSON-ready dict."""
    from ganforge.evaluation import generated_batches, prepare

    plugins = plugins or Plugins()
    dev = _device(device)
    generator, info = load_generator(model, dev, plugins.registry)
    source, images, eval_cfg, train = _open_data(data, info, plugins)
    conditional = _check_data(images, info, data)
    if info.input is not None:  # each output's class is its target's
        conditional = images.num_classes > 0
    evaluation = prepare(
        plugins.registry,
        images,
        source.fingerprint,
        source.metadata,
        num=num,
        extractor=extractor or eval_cfg.get("extractor") or None,
        # The recipe's extractor options belong to the recipe's extractor.
        extractor_options=None if extractor else eval_cfg.get("extractor_options"),
        metrics=_chosen_metrics(metrics, eval_cfg),
        conditional=conditional,
        device=dev,
        seed=seed,
        train=train,
    )
    points = info.output == "points"
    if info.input is not None:  # outputs for the held-out images' inputs, pair by pair
        num = min(num, len(images))
        scores = _score_pairs(generator, info, images, evaluation, num, seed, dev, plugins)
        results = {"generated": scores}
    else:
        batches = generated_batches(
            lambda z, y: generator(z.to(dev), None if y is None else y.to(dev)),
            lambda n, rng: latents_from(info, n, rng),
            num,
            info.num_classes,
            seed,
            prior=info.label_prior,
        )
        with torch.no_grad():
            fake = evaluation.features_of(batches, keep_samples=points)
        results = {"generated": evaluation.score(fake)}
    if evaluation.ceiling is not None:
        results[f"real ({evaluation.ceiling_source})"] = evaluation.ceiling
    return {
        "model": str(model),
        "data": data,
        "extractor": evaluation.extractor.fingerprint,
        "num": num,
        "real_reference": len(evaluation.real),
        "seed": seed,
        "metrics": results,
        "legend": {**evaluation.legend(), **(PAIR_LEGEND if info.input is not None else {})},
    }
