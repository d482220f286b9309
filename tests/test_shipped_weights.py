"""The shipped testbed models load from the repository with diffusers and sample on a CPU."""

import json
from pathlib import Path

import pytest
import torch
from swd.models import TextCondition, adapter_for
from swd.sampling import conditioned, guided, make_generator, sample_scalewise, sample_teacher
from swd.schedules import ScaleSchedule

WEIGHTS = Path(__file__).resolve().parents[1] / "swd" / "weights"
MODELS = ["emoji-teacher", "shapes-teacher", "emoji-student", "shapes-unet-teacher", "shapes-unet-student",
          "emoji-unet-teacher", "emoji-unet-student"]


@pytest.mark.parametrize("name", MODELS)
def test_files_are_small_safetensors(name):
    folder = WEIGHTS / name
    files = list(folder.iterdir())
    assert any(f.suffix == ".safetensors" for f in files)
    assert not any(f.suffix in (".bin", ".pt", ".pkl", ".ckpt") for f in files)
    assert all(f.stat().st_size <= 16 * 1024 * 1024 for f in files)
    assert sum(f.stat().st_size for f in files) <= 40 * 1024 * 1024


@pytest.mark.parametrize("name", MODELS)
def test_loads_and_samples_on_cpu(name):
    from swd.train.validation import load_model_folder

    model, _ = load_model_folder(WEIGHTS / name, "--model")
    model = model.eval()
    config = json.loads((WEIGHTS / name / "config.json").read_text())
    size = config["sample_size"]
    assert config["in_channels"] == 3 and size == (32 if "unet" in name else 64)
    assert config["_class_name"] == ("UNet2DConditionModel" if "unet" in name else "SD3Transformer2DModel")
    adapter = adapter_for(model)
    g = torch.Generator().manual_seed(0)
    cond = TextCondition(torch.randn(2, 16, 384, generator=g), torch.randn(2, 384, generator=g))
    with torch.no_grad():
        if name.endswith("student"):
            schedule = ScaleSchedule.load(WEIGHTS / name / "schedule.yaml")
            x = sample_scalewise(conditioned(adapter, cond), schedule, 2, 3, generator=make_generator(0))
        else:
            uncond = TextCondition(torch.zeros(1, 16, 384), torch.zeros(1, 384))
            x = sample_teacher(guided(adapter, cond, uncond, 4.5), (size, size), 2, 3, steps=4, generator=make_generator(0))
    assert x.shape == (2, 3, size, size) and torch.isfinite(x).all()
    assert x.std() > 0.05  # a trained model's output, not a constant
