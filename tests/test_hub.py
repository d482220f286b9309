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
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))


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
