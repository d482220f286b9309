"""Precomputed prompt embeddings: `swd data encode-prompts` on tiny SD3 / FLUX pipelines, lazy reads."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

from swd.cli import main
from swd.data.prompts import ImageSource, encode_prompt_dataset, load_prompt_embeddings
from swd.errors import SwdError
from swd.train.common import load_training_data

from tests.pipelines import T5_LENGTH, flux_components, sd3_components

CAPTIONS = ["a red cat", "a blue dog", "photo of a cat"]


def image_folder(tmp_path, n=3, size=16):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS[:n]) + "\n")
    return folder


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_encode_prompts_matches_the_pipelines_encoder(tmp_path, family):
    parts = sd3_components() if family == "sd3" else flux_components()
    cls = StableDiffusion3Pipeline if family == "sd3" else FluxPipeline
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **parts)
    pipe.save_pretrained(tmp_path / "pipe")
    images = image_folder(tmp_path)
    (tmp_path / "heldout.txt").write_text("a dog\nred\n")
    out = tmp_path / "train.safetensors"
    rc = main(["data", "encode-prompts", "--pipeline", str(tmp_path / "pipe"), "--images", str(images),
               "--captions", str(tmp_path / "captions.txt"), "--out", str(out), "--dtype", "fp32",
               "--max-sequence-length", str(T5_LENGTH), "--heldout-captions", str(tmp_path / "heldout.txt"),
               "--device", "cpu", "--batch-size", "2"])
    assert rc == 0
    data = load_training_data("embeddings", str(out))
    if family == "sd3":
        want, _, pooled, _ = pipe.encode_prompt(CAPTIONS, None, None, do_classifier_free_guidance=False,
                                                max_sequence_length=T5_LENGTH)
        empty, _, empty_pooled, _ = pipe.encode_prompt([""], None, None, do_classifier_free_guidance=False,
                                                       max_sequence_length=T5_LENGTH)
    else:
        want, pooled, _ = pipe.encode_prompt(CAPTIONS, None, max_sequence_length=T5_LENGTH)
        empty, empty_pooled, _ = pipe.encode_prompt([""], None, max_sequence_length=T5_LENGTH)
        assert want.shape[1] == T5_LENGTH
    cond = data.train_condition(torch.tensor([0, 1, 2]))
    torch.testing.assert_close(cond.prompt_embeds, want)
    torch.testing.assert_close(cond.pooled, pooled)
    torch.testing.assert_close(data.empty_condition().prompt_embeds, empty)
    torch.testing.assert_close(data.empty_condition().pooled, empty_pooled)
    assert data.family == family and data.train_captions == CAPTIONS
    assert data.heldout_captions == ["a dog", "red"] and data.heldout_condition(2).batch_size == 2
    # Images: stored uint8, read back as (B, 3, H, W) in [-1, 1].
    png = np.array(Image.open(images / "001.png"))
    torch.testing.assert_close(data.train_images[[1]][0], torch.from_numpy(png).permute(2, 0, 1).float() / 127.5 - 1)


def fake_encoder(captions):
    """Deterministic stand-in for the text encoders: embeddings from a hash of each caption."""
    embeds, pooled = [], []
    for c in captions:
        g = torch.Generator().manual_seed(sum(map(ord, c)) + len(c))
        embeds.append(torch.randn(5, 16, generator=g))
        pooled.append(torch.randn(8, generator=g))
    return torch.stack(embeds), torch.stack(pooled)


def test_shards_read_lazily_in_any_order(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", array)
    captions = [f"caption {i}" for i in range(7)]
    files = encode_prompt_dataset(tmp_path / "shards", ImageSource(tmp_path / "images.npy"), captions, fake_encoder,
                                  "sd3", dtype="fp32", shard_rows=3)
    assert [f.name for f in files] == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    data = load_prompt_embeddings(tmp_path / "shards")
    assert data.train_images.shape == (7, 3, 8, 8) and len(data.train_images) == 7
    idx = torch.tensor([6, 0, 3, 3, 5, 1])  # across shards, repeated, unsorted
    want = torch.from_numpy(array[idx.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(data.train_images[idx], want)
    embeds, pooled = fake_encoder([captions[i] for i in idx])
    cond = data.train_condition(idx)
    torch.testing.assert_close(cond.prompt_embeds, embeds)
    torch.testing.assert_close(cond.pooled, pooled)
    assert data.text_tokens == 5 and data.joint_dim == 16 and data.pooled_dim == 8
    # No held-out prompts stored: sample grids use the first training prompts.
    assert data.heldout_captions == captions and data.heldout_condition(2).batch_size == 2


def test_user_errors_are_one_liners(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((2, 8, 8, 3), dtype=np.uint8))
    (tmp_path / "caps.txt").write_text("one caption\n")
    assert main(["data", "encode-prompts", "--pipeline", str(tmp_path), "--images", str(tmp_path / "images.npy"),
                 "--captions", str(tmp_path / "caps.txt"), "--out", str(tmp_path / "x.safetensors")]) == 2
    with pytest.raises(SwdError, match="no model_index.json"):
        from swd.data.prompts import PipelineTextEncoder

        PipelineTextEncoder.from_folder(tmp_path)
    from safetensors.torch import save_file

    save_file({"images": torch.zeros(1, 2, 2, 3, dtype=torch.uint8)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SwdError, match="not a prompt-embeddings file"):
        load_prompt_embeddings(tmp_path / "other.safetensors")
    with pytest.raises(SwdError, match="data.path"):
        load_training_data("embeddings", "")
    with pytest.raises(SwdError, match="different sizes"):
        folder = tmp_path / "mixed"
        folder.mkdir()
        Image.new("RGB", (8, 8)).save(folder / "a.png")
        Image.new("RGB", (8, 6)).save(folder / "b.png")
        ImageSource(folder).read(0, 2)
    assert ImageSource(folder, size=4).read(0, 2).shape == (2, 4, 4, 3)
