"""The metrics against analytic values and known cases; the feature extractors' contracts;
``ganforge eval`` end to end on a digits generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from ganforge.evaluation import EvalContext, EvalError, Features
from ganforge_plugins.metrics import (
    ClassifierAccuracy,
    FrechetDistance,
    InceptionScore,
    IntraClassFD,
    KernelDistance,
    PrecisionRecall,
    frechet_distance,
    gaussian,
)

CTX = EvalContext()


def random_covariance(dims: int, seed: int) -> torch.Tensor:
    a = torch.randn(dims, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / dims + 0.1 * torch.eye(dims, dtype=torch.float64)


def test_frechet_distance_between_gaussians_matches_the_closed_form():
    dims = 16
    mu1, mu2 = torch.zeros(dims, dtype=torch.float64), torch.full((dims,), 0.5, dtype=torch.float64)
    s1, s2 = random_covariance(dims, 1), random_covariance(dims, 2)  # they do not commute
    expected = float(
        (mu1 - mu2) @ (mu1 - mu2)
        + np.trace(s1.numpy() + s2.numpy() - 2 * np.real(sqrtm(s1.numpy() @ s2.numpy())))
    )
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)
    # Commuting (diagonal) covariances: Σ (σ1 − σ2)² on the diagonal.
    d1, d2 = torch.diag(torch.arange(1.0, 5.0)), torch.diag(torch.full((4,), 4.0))
    analytic = float(((d1.diagonal().sqrt() - 2) ** 2).sum())
    zero = torch.zeros(4, dtype=torch.float64)
    assert frechet_distance(zero, d1.double(), zero, d2.double()) == pytest.approx(analytic)


def test_fd_of_samples_converges_to_the_gaussians_distance():
    dims, n = 8, 200_000
    s1, s2 = random_covariance(dims, 3), random_covariance(dims, 4)
    mu2 = torch.full((dims,), 0.3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dims, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = torch.randn(n, dims, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    fd = FrechetDistance()(Features(x), Features(y + mu2), CTX)[""]
    assert fd == pytest.approx(frechet_distance(torch.zeros(dims), s1, mu2, s2), rel=0.02)
    mu, sigma = gaussian(x)
    assert torch.allclose(sigma, s1, atol=0.02)


def test_kid_is_near_zero_for_one_distribution_and_large_for_two():
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(600, 32, generator=gen, dtype=torch.float64) for _ in range(2))
    kid = KernelDistance(subsets=20, subset_size=300)
    same = kid(Features(a), Features(b), CTX)
    shifted = kid(Features(a), Features(b + 0.5), CTX)
    assert abs(same[""]) < 3 * same["std"] + 1e-3
    assert shifted[""] > 20 * max(abs(same[""]), same["std"])
    # Identical sets: ≈ 0 (the unbiased estimator is not exactly 0 on one set against itself).
    assert abs(kid(Features(a), Features(a.clone()), CTX)[""]) < 0.05 * shifted[""]


def test_inception_score_extremes():
    confident = torch.eye(10, dtype=torch.float64).repeat(100, 1) * 50  # every class, sure
    assert InceptionScore(splits=5)(None, Features(confident, confident), CTX)[""] == (
        pytest.approx(10, rel=1e-6)
    )
    one_class = torch.zeros(1000, 10, dtype=torch.float64)
    one_class[:, 3] = 50
    assert InceptionScore()(None, Features(one_class, one_class), CTX)[""] == pytest.approx(1)
    with pytest.raises(EvalError, match="class logits"):
        InceptionScore()(None, Features(one_class), CTX)


@pytest.mark.parametrize("count", [15, 898, 1000])
def test_inception_score_splits_as_the_reference_code_cuts_them(count):
    """Split i is samples [i*N//10, (i+1)*N//10) (OpenAI's code, torch-fidelity), also when 10
    does not divide N: 15 samples make 10 splits of 1 or 2, not 8 of 2 and one of 1."""
    logits = torch.randn(count, 10, generator=torch.Generator().manual_seed(count)).double() * 3
    p = logits.softmax(1).numpy()
    scores = []
    for i in range(10):
        part = p[i * count // 10 : (i + 1) * count // 10]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    got = InceptionScore()(None, Features(logits, logits), CTX)
    assert got[""] == pytest.approx(np.mean(scores), rel=1e-12)
    assert got["std"] == pytest.approx(np.std(scores), rel=1e-9)


def test_inception_score_needs_a_sample_per_split():
    logits = torch.randn(9, 10).double()
    with pytest.raises(EvalError, match="at least 10 samples"):
        InceptionScore()(None, Features(logits, logits), CTX)


def test_precision_and_recall_separate_quality_from_coverage():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 4, generator=gen, dtype=torch.float64)
    pr = PrecisionRecall(k=3)
    same = pr(Features(real), Features(torch.randn(2000, 4, generator=gen).double()), CTX)
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    collapsed = real[real[:, 0] > 1.0][:300]  # real-looking, but one region only
    dropped = pr(Features(real), Features(collapsed), CTX)
    assert dropped["precision"] > 0.9 and dropped["recall"] < 0.3
    far = pr(Features(real), Features(real + 100), CTX)
    assert far["precision"] == 0 and far["recall"] == 0


def test_class_metrics_need_the_right_labels():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 3
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]], dtype=torch.float64)

    def samples():
        return centres[labels] + 0.3 * torch.randn(600, 2, generator=gen, dtype=torch.float64)

    real = Features(samples(), labels=labels)
    right = Features(samples(), labels=labels)
    swapped = Features(samples(), labels=(labels + 1) % 3)
    intra = IntraClassFD()
    assert intra(real, right, CTX)[""] < 0.05 < 10 < intra(real, swapped, CTX)[""]
    logits = torch.nn.functional.one_hot(labels, 3).double() * 10
    ctx = EvalContext(num_classes=3, extractor_classes=3)
    assert ClassifierAccuracy()(real, Features(right.features, logits, labels), ctx)[""] == 1.0
    with pytest.raises(EvalError, match="labelled data"):
        intra(Features(real.features), right, CTX)


def test_the_digits_extractor_classifies_held_out_digits(digits_classifier):
    assert digits_classifier >= 0.97  # held-out accuracy of the classifier
    from ganforge.plugins import Plugins

    net = Plugins().registry.get("feature_extractor", "digits").factory()
    assert net.num_classes == 10 and net.fingerprint.startswith("digits-cnn-v1-")
    features, logits = net(torch.rand(4, 3, 64, 64) * 2 - 1)  # any size, colour or grey
    assert features.shape == (4, 64) and logits.shape == (4, 10)


def test_the_inception_network_has_the_fid_layout():
    from ganforge_plugins.inception import FIDInceptionV3

    net = FIDInceptionV3().eval()
    # torchvision's Inception-v3 has 27,161,264 parameters; less its auxiliary head
    # (3,326,696), plus 8 more classes in the fc (8 × 2049): 23,850,960.
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    with torch.no_grad():
        features, logits = net(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert (features >= 0).all()  # average of ReLU outputs


def test_inception_weights_are_found_checked_and_never_downloaded_in_tests(tmp_path, monkeypatch):
    from ganforge.errors import GanforgeError
    from ganforge_plugins import inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(GanforgeError, match="are not on this machine") as missing:
        inception.inception_extractor()
    assert "pt_inception-2015-12-05-6726825d.pth" in str(missing.value)
    # A file with the right name but other contents is refused by size and hash, before any
    # of it is read as a pickle.
    weights = tmp_path / "torch" / "hub" / "checkpoints" / inception.FILE
    weights.parent.mkdir(parents=True)
    torch.save(inception.FIDInceptionV3().state_dict(), weights)
    real_load = torch.load

    def never(*args, **kwargs):
        raise AssertionError("an unchecked .pth was unpickled")

    monkeypatch.setattr(inception.torch, "load", never)
    with pytest.raises(GanforgeError, match="is not the FID Inception weights"):
        inception.inception_extractor()
    # The same size but another digest is refused too (a prefix match is not enough).
    monkeypatch.setattr(inception, "SOURCE_BYTES", weights.stat().st_size)
    digest = inception.sha256_file(weights)
    monkeypatch.setattr(inception, "SOURCE_SHA256", digest[:8] + "0" * 56)
    with pytest.raises(GanforgeError, match="is not the FID Inception weights"):
        inception.inception_extractor()
    assert not list((tmp_path / "cache" / "weights").glob("*"))
    # With this file's size and whole digest pinned, it loads (tensors only) and is converted.
    monkeypatch.setattr(inception, "SOURCE_SHA256", digest)
    monkeypatch.setattr(inception.torch, "load", real_load)
    net = inception.inception_extractor()
    assert net.fingerprint == "fid-inception-v3-6726825d"
    converted = inception.converted_path()
    assert converted.is_file() and converted.with_name(converted.name + ".sha256").is_file()


def test_a_planted_or_damaged_converted_inception_file_is_never_used(tmp_path, monkeypatch):
    """A converted file that is not the one ganforge wrote (random weights planted in the
    cache, a flipped byte, no record) is refused, or converted again from the checked .pth."""
    from safetensors.torch import save_file

    from ganforge.errors import GanforgeError
    from ganforge_plugins import inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = tmp_path / "torch" / "hub" / "checkpoints" / inception.FILE
    weights.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(inception.FIDInceptionV3().state_dict(), weights)
    monkeypatch.setattr(inception, "SOURCE_BYTES", weights.stat().st_size)
    monkeypatch.setattr(inception, "SOURCE_SHA256", inception.sha256_file(weights))
    source = torch.load(weights, weights_only=True)
    inception.inception_extractor()
    converted = inception.converted_path()
    record = converted.with_name(converted.name + ".sha256")
    torch.manual_seed(2)
    planted = {k: v.contiguous() for k, v in inception.FIDInceptionV3().state_dict().items()}

    def loaded_weights():
        return inception.inception_extractor().state_dict()["fc.weight"]

    # Planted random weights (the record left as it was): converted again from the .pth.
    save_file(planted, str(converted))
    assert torch.equal(loaded_weights(), source["fc.weight"])
    # One flipped byte, without the .pth here: refused with one message.
    weights.rename(tmp_path / "aside.pth")
    data = bytearray(converted.read_bytes())
    data[-1] ^= 1
    converted.write_bytes(bytes(data))
    with pytest.raises(GanforgeError, match="does not match the SHA-256 recorded"):
        inception.inception_extractor()
    # A converted file with no record at all is not used either.
    save_file(planted, str(converted))
    record.unlink()
    with pytest.raises(GanforgeError, match="does not match the SHA-256 recorded"):
        inception.inception_extractor()
    # The .pth back: converted again, and the record matches the new file.
    (tmp_path / "aside.pth").rename(weights)
    assert torch.equal(loaded_weights(), source["fc.weight"])
    assert inception.load_converted() is not None


def test_a_planted_or_damaged_cached_classifier_is_trained_again(tmp_path, monkeypatch, capsys):
    """A randomly initialised digits-cnn-v1.safetensors planted in the cache once gave
    `ganforge eval` an Inception Score of 1.0001 with exit 0: a cached classifier must carry
    the digest of its tensors, recorded when it was trained."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    import ganforge_plugins.digits as digits

    trained = []

    def train(epochs=12, log=None):  # stands in for the minute of real training
        torch.manual_seed(len(trained))
        trained.append(1)
        return digits.DigitsClassifier().eval(), 0.97

    monkeypatch.setattr(digits, "train_digits_classifier", train)
    path = tmp_path / "cache" / "eval" / "digits-cnn-v1.safetensors"
    path.parent.mkdir(parents=True)
    planted = {k: v.contiguous() for k, v in digits.DigitsClassifier().state_dict().items()}
    save_file(planted, str(path))  # random weights, no digest
    first = digits.digits_extractor()
    err = capsys.readouterr().err
    assert trained == [1] and "is unusable" in err and "training the digits classifier" in err
    assert digits.digits_extractor().fingerprint == first.fingerprint and trained == [1]

    tampered = load_file(str(path))
    tampered["head.2.bias"] += 1.0  # the recorded digest stays, the weights change
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    save_file(tampered, str(path), metadata=metadata)
    digits.digits_extractor()
    assert trained == [1, 1] and "do not match the digest" in capsys.readouterr().err
