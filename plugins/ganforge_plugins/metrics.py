"""The standard GAN metrics, in float64, on whatever features the run's extractor gives.

- ``fd``: Fréchet distance between Gaussians fitted to real and generated features (FID with
  the ``inception`` extractor; Heusel et al. 2017). The matrix square root is taken of a
  symmetric PSD product by eigendecomposition, never of a non-symmetric one.
- ``kid``: kernel distance, the unbiased MMD² with the cubic polynomial kernel averaged over
  random subsets (Bińkowski et al. 2018); reports the mean and standard deviation.
- ``is``: Inception Score, exp E[KL(p(y|x) ‖ p(y))] over splits (Salimans et al. 2016), from the
  extractor's class logits.
- ``pr``: improved precision and recall with k-NN balls (Kynkäänniemi et al. 2019).
- ``intra_fd``: the mean over classes of the FD between real and generated samples of a class
  (conditional models; Miyato & Koyama 2018).
- ``accuracy``: how often the extractor's classifier assigns a generated sample to the class
  it was generated for (conditional models, an extractor trained on the data's classes).
- ``identity``: a feature extractor for point data: the points themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from ganforge import hookimpl
from ganforge.evaluation import EvalContext, EvalError, Features


def gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of N×F features, in float64."""
    x = features.double()
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / max(len(x) - 1, 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), with tr((Σ1Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½):
    the eigenvalues of a symmetric PSD matrix, stable where ``sqrtm(Σ1Σ2)`` is not."""
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


class FrechetDistance:
    """Fréchet distance of the features (FID with the inception extractor)."""

    legend = {"": "Fréchet distance of the features; lower is better, 0 = the same statistics"}

    def __call__(self, real: Features, fake: Features, context: EvalContext) -> dict:
        return {"": frechet_distance(*gaussian(real.features), *gaussian(fake.features))}


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² with k(a, b) = (a·b / F + 1)³."""
    dims, m, n = x.shape[1], len(x), len(y)
    kxx = (x @ x.T / dims + 1) ** 3
    kyy = (y @ y.T / dims + 1) ** 3
    kxy = (x @ y.T / dims + 1) ** 3
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


class KernelDistance:
    """Kernel (inception) distance: unbiased MMD², mean and std over random subsets."""

    legend = {
        "": "kernel distance: unbiased MMD² of the features, as is (not ×1000); lower is better, "
        "about 0 (it can dip below) = the same distribution",
        "std": "its standard deviation over the random subsets",
    }

    def __init__(self, subsets: int = 100, subset_size: int = 1000):
        if subsets < 1 or subset_size < 2:
            raise ValueError("subsets must be >= 1 and subset_size >= 2")
        self.subsets, self.subset_size = subsets, subset_size

    def __call__(self, real: Features, fake: Features, context: EvalContext) -> dict:
        size = min(self.subset_size, len(real), len(fake))
        rng = torch.Generator().manual_seed(context.seed)
        values = torch.tensor(
            [
                mmd2_unbiased(
                    real.features[torch.randperm(len(real), generator=rng)[:size]].double(),
                    fake.features[torch.randperm(len(fake), generator=rng)[:size]].double(),
                )
                for _ in range(self.subsets)
            ],
            dtype=torch.float64,
        )
        return {"": values.mean().item(), "std": values.std(correction=0).item()}


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` of exp E[KL(p(y|x) ‖ p(y))]. Split ``i`` is
    samples ``[i·N//splits, (i+1)·N//splits)``, as in the original code and torch-fidelity
    (``chunk`` would make fewer, larger pieces when N does not divide)."""
    count = len(logits)
    if count < splits:
        raise EvalError(f"metric 'is' needs at least {splits} samples (its splits), got {count}")
    log_p = logits.double().log_softmax(1)
    scores = []
    bounds = [i * count // splits for i in range(splits + 1)]
    for part in (log_p[a:b] for a, b in zip(bounds, bounds[1:], strict=False)):
        log_marginal = part.exp().mean(0).log()
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(kl.exp())
    values = torch.stack(scores)
    return values.mean().item(), values.std(correction=0).item()  # as the reference code


class InceptionScore:
    """Inception Score of the generated samples (needs an extractor with class logits)."""

    legend = {
        "": "Inception Score with the extractor's classifier; higher is better, at most its "
        "number of classes",
        "std": "its standard deviation over the splits",
    }

    def __init__(self, splits: int = 10):
        if splits < 1:
            raise ValueError("splits must be >= 1")
        self.splits = splits

    def __call__(self, real: Features, fake: Features, context: EvalContext) -> dict:
        if fake.logits is None:
            raise EvalError("metric 'is' needs an extractor with class logits")
        mean, std = inception_score(fake.logits, self.splits)
        return {"": mean, "std": std}


def _kth_distances(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    out = []
    for part in x.split(chunk):
        d = torch.cdist(part, x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the row itself is at distance 0
    return torch.cat(out)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int):
    """For each point: inside the k-NN ball of any centre."""
    out = []
    for part in points.split(chunk):
        out.append((torch.cdist(part, centres) <= radii[None]).any(1))
    return torch.cat(out)


class PrecisionRecall:
    """Improved precision (fakes in the real manifold) and recall (reals in the fake one)."""

    legend = {
        "precision": "share of generated samples inside the real data's k-NN manifold; higher "
        "is better (realism)",
        "recall": "share of real samples inside the generated samples' k-NN manifold; higher "
        "is better (coverage: low recall is mode dropping)",
    }

    def __init__(self, k: int = 3, chunk: int = 1000):
        if k < 1 or chunk < 1:
            raise ValueError("k and chunk must be >= 1")
        self.k, self.chunk = k, chunk

    def __call__(self, real: Features, fake: Features, context: EvalContext) -> dict:
        r, f = real.features.double(), fake.features.double()
        if min(len(r), len(f)) <= self.k:
            raise EvalError(f"metric 'pr' needs more than k = {self.k} samples per side")
        real_radii = _kth_distances(r, self.k, self.chunk)
        fake_radii = _kth_distances(f, self.k, self.chunk)
        return {
            "precision": _covered(f, r, real_radii, self.chunk).double().mean().item(),
            "recall": _covered(r, f, fake_radii, self.chunk).double().mean().item(),
        }


def _needs_labels(name: str, real: Features, fake: Features) -> None:
    if real.labels is None or fake.labels is None:
        raise EvalError(f"metric {name!r} is for conditional models on labelled data")


class IntraClassFD:
    """Mean over classes of the Fréchet distance between real and generated samples of a class."""

    legend = {
        "": "Fréchet distance within each class, averaged; lower is better",
        "classes": "the number of classes averaged",
    }

    def __call__(self, real: Features, fake: Features, context: EvalContext) -> dict:
        _needs_labels("intra_fd", real, fake)
        distances = {}
        for c in sorted(set(real.labels.tolist()) & set(fake.labels.tolist())):
            a, b = real.features[real.labels == c], fake.features[fake.labels == c]
            if len(a) >= 2 and len(b) >= 2:
                distances[c] = frechet_distance(*gaussian(a), *gaussian(b))
        if not distances:
            raise EvalError("metric 'intra_fd' found no class with 2 samples on each side")
        return {"": sum(distances.values()) / len(distances), "classes": len(distances)}


class ClassifierAccuracy:
    """Share of generated samples the extractor's classifier puts in their conditioning class."""

    legend = {
        "": "share of samples the extractor classifies as their conditioning class; higher "
        "is better"
    }

    def __call__(self, real: Features, fake: Features, context: EvalContext) -> dict:
        _needs_labels("accuracy", real, fake)
        if fake.logits is None or context.extractor_classes != context.num_classes:
            raise EvalError(
                "metric 'accuracy' needs an extractor whose classifier has the data's "
                f"{context.num_classes} classes (this one has {context.extractor_classes})"
            )
        return {"": (fake.logits.argmax(1) == fake.labels).double().mean().item()}


class Identity(nn.Module):
    """Point data as its own features (no classifier head)."""

    fingerprint = "identity-v1"
    num_classes = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.flatten(1), None


@hookimpl
def ganforge_register_metrics(register):
    register("fd", FrechetDistance)
    register("kid", KernelDistance)
    register("is", InceptionScore)
    register("pr", PrecisionRecall)
    register("intra_fd", IntraClassFD)
    register("accuracy", ClassifierAccuracy)


@hookimpl
def ganforge_register_feature_extractors(register):
    register("identity", Identity)
