"""Augmentation of what the critic sees: DiffAugment's transforms, the core's fixed and
adaptive (ADA) probability, the recipe table, and training through it."""

from __future__ import annotations

import pytest
import torch

import ganforge
from ganforge.augment import Augmenter
from ganforge.errors import RecipeError
from ganforge.trainer import read_metrics
from ganforge_plugins.augment import DiffAugment, cut_out, translate

ONE = torch.tensor(1.0)


def dot_image(b: int = 16, size: int = 16) -> torch.Tensor:
    """Images that are all 1 except a single 3 at the centre."""
    x = torch.ones(b, 2, size, size)
    x[:, :, size // 2, size // 2] = 3.0
    return x


def test_translation_moves_each_image_whole_and_fills_with_zeros():
    torch.manual_seed(0)
    x = dot_image()
    out = translate(x, ratio=0.25)  # up to 4 px at 16 px
    for image in out:
        (y, x_), *_ = (image[0] == 3).nonzero().tolist()
        dy, dx = y - 8, x_ - 8
        assert abs(dy) <= 4 and abs(dx) <= 4
        assert torch.equal(image[0], image[1])  # channels move together
        # Rows and columns shifted in from outside the image are zeros, the rest kept.
        assert (image[0] == 0).sum() == 16 * 16 - (16 - abs(dy)) * (16 - abs(dx))
    shifts = {tuple(((img[0] == 3).nonzero()[0] - 8).tolist()) for img in out}
    assert len(shifts) > 4  # per-image random shifts


def test_cutout_zeros_one_square_of_the_given_size_per_image():
    torch.manual_seed(1)
    out = cut_out(torch.ones(32, 1, 16, 16), ratio=0.5)
    for image in out[:, 0]:
        rows, cols = (image == 0).nonzero().unbind(1)
        # An 8×8 square, cropped where its centre lies near the border.
        assert 0 < len(rows) <= 64
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(rows) == height * width and height <= 8 and width <= 8


def test_probability_zero_changes_nothing_and_one_changes_every_image():
    x = torch.randn(64, 3, 16, 16)
    augment = DiffAugment()
    assert torch.equal(augment(x, torch.tensor(0.0)), x)
    changed = (augment(x, ONE) != x).flatten(1).any(1)
    assert changed.all()
    half = (augment(x, torch.tensor(0.5)) != x).flatten(1).any(1).float().mean()
    assert 0.7 < half < 1.0  # 1 - 0.5^5 of images take at least one of five transforms


def test_gradients_reach_the_images_through_every_transform():
    torch.manual_seed(2)
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    for policy in (["color"], ["translation"], ["cutout"]):
        x.grad = None
        out = DiffAugment(policy)(x, ONE)
        out.pow(2).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, policy
    # Translation and cutout route each output pixel to one input pixel (or none).
    x.grad = None
    torch.manual_seed(3)
    out = translate(x)
    out.sum().backward()
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}
    assert x.grad.sum() == (out != 0).sum()


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="policy must list"):
        DiffAugment(["colour"])
    with pytest.raises(ValueError, match="cutout must be"):
        DiffAugment(cutout=0.0)


def make_augmenter(**kwargs) -> Augmenter:
    settings = dict(p=0.0, adaptive=True, target=0.6, interval=4, speed_images=640)
    settings.update(kwargs)
    return Augmenter(
        DiffAugment(["translation"]), batch_size=16, device=torch.device("cpu"), **settings
    )


def test_adaptive_probability_follows_the_overfitting_heuristic():
    augmenter = make_augmenter()  # each adjustment moves p by 4 × 16 / 640 = 0.1
    confident = torch.ones(16)  # D calls every real image real: r_t = 1 > 0.6
    for step in range(12):
        augmenter.observe(confident)
        augmenter.adjust(step)
        # p moves only after every 4th step.
        assert augmenter.p.item() == pytest.approx(0.1 * ((step + 1) // 4))
    assert augmenter.r_t.item() == 1.0
    unsure = torch.tensor([1.0, -1.0] * 8)  # r_t = 0 < 0.6: p goes down, never below 0
    for step in range(12, 40):
        augmenter.observe(unsure)
        augmenter.adjust(step)
    assert augmenter.p.item() == 0.0 and augmenter.r_t.item() == 0.0


def test_a_fixed_probability_never_moves_and_the_state_round_trips():
    fixed = make_augmenter(p=0.7, adaptive=False)
    for step in range(8):
        fixed.observe(torch.ones(16))
        fixed.adjust(step)
    assert fixed.p.item() == pytest.approx(0.7)
    adaptive = make_augmenter(p=0.25)
    adaptive.observe(torch.tensor([1.0, 1.0, -1.0]))
    copy = make_augmenter()
    copy.load_state_dict(adaptive.state_dict())
    for name in Augmenter.STATE:
        assert torch.equal(getattr(copy, name), getattr(adaptive, name)), name


class CallLog:
    """An augmentation that records what it is applied to and marks it (adds 0)."""

    def __init__(self):
        self.seen: list[tuple[int, bool]] = []

    def __call__(self, x, p):
        self.seen.append((x.shape[0], x.requires_grad))
        return x + 0.0 * p


class Recording:
    def __init__(self):
        self.log = CallLog()

    @ganforge.hookimpl
    def ganforge_register_augmentations(self, register):
        register("calllog", lambda: self.log)


def test_the_critic_augments_reals_and_fakes_in_both_phases(tiny):
    plugin = Recording()
    trainer = tiny("augment.name=calllog", "train.steps=1", extra=[("rec", plugin)])
    trainer.fit()
    # D phase: reals, detached fakes; G phase: fakes with a graph into G.
    assert plugin.log.seen == [(8, False), (8, False), (8, True)]


def test_training_logs_and_checkpoints_the_probability(tiny):
    trainer = tiny(
        "augment.name=diffaugment",
        "augment.adaptive=true",
        "augment.p=0.0",
        "augment.interval=1",
        "augment.speed_images=80",
        "train.steps=4",
    )
    trainer.fit()
    logged = [m["augment/p"] for m in read_metrics(trainer.run_dir)]
    assert len(logged) == 4 and all(0 <= p <= 1 for p in logged)
    assert logged[-1] == pytest.approx(trainer.augmenter.p.item())
    state = trainer.augmenter.state_dict()
    import json

    saved = json.loads((trainer.run_dir / "checkpoints/step_000004/state.json").read_text())
    assert saved["augment"] == state


def test_recipe_errors_name_the_augment_keys(tiny):
    with pytest.raises(RecipeError, match=r"augment.policy: augmentation options need augment"):
        tiny("augment.policy=['translation']")
    with pytest.raises(RecipeError, match=r"augment.name: .*diffaugment"):
        tiny("augment.name=diffaugmnt")
    with pytest.raises(RecipeError, match=r"augment: augmentation 'diffaugment' rejected"):
        tiny("augment.name=diffaugment", "augment.policy=['zoom']")
    with pytest.raises(RecipeError, match=r"augment.p: must be in \[0, 1\]"):
        tiny("augment.name=diffaugment", "augment.p=1.5")
