"""Speed switches ([train] channels_last, tf32, cudnn_benchmark) change layouts, not results."""

from __future__ import annotations

import pytest
import torch

from ganforge.errors import RecipeError
from ganforge.recipe import validate
from ganforge.trainer import read_metrics

CL = "train.channels_last=true"


def test_channels_last_trains_the_same_model_in_nhwc(tiny, one_thread, tmp_path, capsys):
    fast = tiny(CL, "train.steps=4", f"run.out_dir={tmp_path / 'cl'}")
    # float32 on a CPU: the layout that can be slow there is named (bf16: no warning, test_cli)
    assert "warning: train.channels_last = true on a CPU without bf16" in capsys.readouterr().out
    for model in (fast.generator, fast.discriminator):
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    real, _ = fast.batches.next(with_labels=False)
    assert real.is_contiguous(memory_format=torch.channels_last)
    assert not real.is_contiguous()  # truly NHWC, not a layout that is both
    plain = tiny("train.steps=4", f"run.out_dir={tmp_path / 'plain'}")
    plain_real, _ = plain.batches.next(with_labels=False)
    assert torch.equal(real, plain_real)  # same pixels, another layout
    # Fresh runs of each (the batches drawn above moved their data order).
    fast = tiny(CL, "train.steps=4", f"run.out_dir={tmp_path / 'cl2'}")
    plain = tiny("train.steps=4", f"run.out_dir={tmp_path / 'plain2'}")
    fast.fit()
    plain.fit()
    # Same arithmetic in another order: the losses agree to float32 rounding.
    for a, b in zip(read_metrics(fast.run_dir), read_metrics(plain.run_dir), strict=True):
        assert a["d_loss"] == pytest.approx(b["d_loss"], rel=1e-4, abs=1e-5)
        assert a["g_loss"] == pytest.approx(b["g_loss"], rel=1e-4, abs=1e-5)


def test_a_channels_last_run_checkpoints_resumes_and_exports(tiny, one_thread, tmp_path):
    from ganforge.export import load_generator

    short = tiny(CL, "train.steps=2")
    short.fit()
    extended = tiny(CL, "train.steps=4")
    assert extended.step == 2
    extended.fit()
    straight = tiny(CL, "train.steps=4", f"run.out_dir={tmp_path / 'straight'}")
    straight.fit()
    for a, b in zip(
        extended.generator.state_dict().values(),
        straight.generator.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)
    generator, _ = load_generator(extended.run_dir / "generator.safetensors")
    z = torch.randn(2, *generator.latent_shape)
    assert torch.isfinite(generator(z, None)).all()


def test_switch_values_are_checked(tmp_path):
    from conftest import tiny_tables

    with pytest.raises(RecipeError, match="train.tf32: must be one of 'auto', 'on', 'off'"):
        validate(tiny_tables(tmp_path, "train.tf32=yes"), None)
    with pytest.raises(RecipeError, match="train.channels_last: expected"):
        validate(tiny_tables(tmp_path, "train.channels_last=1"), None)
