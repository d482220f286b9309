"""The student's schedule travels in the pipeline's own config (model_index.json), and folders the
trainer exported before that entry existed (a schedule.yaml beside the student's config.json) still
give theirs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import SD3Transformer2DModel

from swd.errors import SwdError
from swd.models import SD3Adapter, TextCondition
from swd.pipelines import SwDFluxPipeline, SwDStableDiffusion3Pipeline, SwDStableDiffusionXLPipeline, SwDWanPipeline
from swd.sampling import conditioned, sample_scalewise
from swd.schedules import ScaleSchedule
from swd.train.distill import export_student

from tests.pipelines import (
    TINY_SCHEDULE,
    embeddings,
    flux_components,
    quiet,
    sample,
    sd3_components,
    sdxl_components,
    wan_components,
)

WEIGHTS = Path(__file__).resolve().parents[2] / "swd" / "weights"
# Not a preset, and sigmas with more digits than schedule.yaml keeps (6 decimals).
STUDENT = ScaleSchedule(scales=(8, 12, 16, 24), sigmas=(1.0, 0.912345678912, 0.7, 0.55), name="student-4")


def run(pipe, seed=0, **kwargs):
    """Latents on a fixed seed with the pipeline's own schedule unless schedule= is given."""
    prompt_embeds, pooled = embeddings(1)
    return sample(pipe, None, seed, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, **kwargs)


def realign(model):
    """Copies of the weights in fresh memory. from_pretrained memory-maps safetensors at unaligned
    offsets, and CPU kernels then round differently (~3e-7 on these models); with copies the loaded
    model computes bit for bit what the saved one did."""
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)


def test_sd3_schedule_round_trips_through_save_and_load_and_samples_the_same_latents(tmp_path):
    pipe = quiet(SwDStableDiffusion3Pipeline(**sd3_components(with_text=False), schedule=STUDENT))
    assert pipe.schedule == STUDENT
    saved = run(pipe)
    torch.testing.assert_close(saved, run(pipe, schedule=STUDENT), rtol=0, atol=0)  # the config's schedule is used
    assert (saved - run(pipe, schedule=TINY_SCHEDULE)).abs().max() > 1e-3  # and it matters

    pipe.save_pretrained(tmp_path / "student")
    entry = json.loads((tmp_path / "student" / "model_index.json").read_text())["schedule"]
    assert entry["sigmas"] == list(STUDENT.sigmas) and entry["scales"] == [[8, 8], [12, 12], [16, 16], [24, 24]]
    assert not (tmp_path / "student" / "schedule.yaml").exists()

    loaded = quiet(SwDStableDiffusion3Pipeline.from_pretrained(tmp_path / "student"))
    assert loaded.schedule == STUDENT
    realign(loaded.transformer)
    torch.testing.assert_close(run(loaded), saved, rtol=0, atol=0)
    # A call's schedule= still wins over the config's.
    torch.testing.assert_close(run(loaded, schedule=TINY_SCHEDULE), run(pipe, schedule=TINY_SCHEDULE), rtol=0, atol=0)


@pytest.mark.parametrize("cls, components", [(SwDFluxPipeline, flux_components),
                                              (SwDStableDiffusionXLPipeline, sdxl_components)])
def test_flux_and_sdxl_keep_the_schedule_in_their_config(tmp_path, cls, components):
    pipe = quiet(cls(**components(with_text=False)))
    assert pipe.schedule is None  # built in memory: no entry, calls use the family preset
    assert pipe.set_schedule(STUDENT) is pipe and pipe.schedule == STUDENT
    pipe.save_pretrained(tmp_path / "p")
    loaded = quiet(cls.from_pretrained(tmp_path / "p"))
    assert loaded.schedule == STUDENT
    assert run(loaded).shape == (1, 4, 24, 24)


def test_wan_keeps_a_video_schedule_in_its_config(tmp_path):
    video = ScaleSchedule(scales=[(1, 2, 2), (2, 4, 4)], sigmas=[1.0, 0.6543210987], name="video-2")
    pipe = quiet(SwDWanPipeline(**wan_components(with_text=False), schedule=video))
    pipe.save_pretrained(tmp_path / "wan")
    loaded = quiet(SwDWanPipeline.from_pretrained(tmp_path / "wan"))
    assert loaded.schedule == video
    frames = sample(loaded, None, prompt_embeds=torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(7)))
    assert frames.shape == (1, 16, 2, 4, 4)  # the config's last scale, (frames, h, w)


def test_a_folder_saved_before_the_entry_loads_with_the_schedule_yaml_beside_the_network(tmp_path):
    parts = sd3_components(with_text=False)
    quiet(SwDStableDiffusion3Pipeline(**parts)).save_pretrained(tmp_path / "old")
    index = tmp_path / "old" / "model_index.json"
    data = json.loads(index.read_text())
    del data["schedule"]
    index.write_text(json.dumps(data))
    # Without a schedule anywhere: the family preset, which does not fit this tiny transformer.
    bare = quiet(SwDStableDiffusion3Pipeline.from_pretrained(tmp_path / "old"))
    assert bare.schedule is None
    with pytest.raises(SwdError, match=r"scales\[0\]: 64x64 exceeds"):
        run(bare)
    # The student's folder as the trainer exports it, copied in as the transformer component.
    shutil.rmtree(tmp_path / "old" / "transformer")
    export_student(parts["transformer"], tmp_path / "old" / "transformer", STUDENT)
    loaded = quiet(SwDStableDiffusion3Pipeline.from_pretrained(tmp_path / "old"))
    assert loaded.schedule == ScaleSchedule.load(tmp_path / "old" / "transformer" / "schedule.yaml")
    assert loaded.schedule.sigmas == (1.0, 0.912346, 0.7, 0.55)  # the file's 6 decimals
    assert run(loaded).shape == (1, 4, 24, 24)
    # Saving it again writes the schedule into model_index.json.
    loaded.save_pretrained(tmp_path / "new")
    assert quiet(SwDStableDiffusion3Pipeline.from_pretrained(tmp_path / "new")).schedule == loaded.schedule


@torch.no_grad()
def test_the_shipped_emoji_student_brings_its_schedule():
    transformer = SD3Transformer2DModel.from_pretrained(WEIGHTS / "emoji-student").eval()
    pipe = quiet(SwDStableDiffusion3Pipeline(transformer=transformer, vae=None))
    expected = ScaleSchedule.load(WEIGHTS / "emoji-student" / "schedule.yaml")
    assert pipe.schedule == expected and expected.name == "testbed-4"
    g = torch.Generator().manual_seed(0)
    cond = TextCondition(torch.randn(1, 16, 384, generator=g), torch.randn(1, 384, generator=g))
    ours = pipe(prompt_embeds=cond.prompt_embeds, pooled_prompt_embeds=cond.pooled, output_type="latent",
                generator=torch.Generator().manual_seed(1)).images
    reference = sample_scalewise(conditioned(SD3Adapter(transformer), cond), expected, 1, 3,
                                 generator=torch.Generator().manual_seed(1))
    assert ours.shape == (1, 3, 64, 64)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


@pytest.mark.parametrize("schedule, message", [
    ("no-such-preset", "unknown preset 'no-such-preset'"),
    (3, "schedule: expected a preset name, a schedule file or a ScaleSchedule, got int"),
    ({"scales": [8, 16]}, "schedule: missing key 'sigmas'"),
])
def test_a_bad_schedule_is_one_line_at_construction(schedule, message):
    with pytest.raises(SwdError, match=message):
        SwDStableDiffusion3Pipeline(**sd3_components(with_text=False), schedule=schedule)
