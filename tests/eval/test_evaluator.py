"""The evaluator network: shapes, input handling, losses, save/load, a tiny training run, and the
shipped weights (their files, their recorded accuracy, and what they still score today)."""

import json
import math

import numpy as np
import pytest
import torch

from swd.errors import SwdError
from swd.eval.evaluator import (
    TrainSettings,
    augment,
    contrastive_loss,
    default_evaluator_dir,
    evaluator_available,
    extract,
    load_evaluator,
    retrieval,
    save_evaluator,
    train_evaluator,
)
from swd.models.evaluator import Evaluator, EvaluatorConfig, prepare_images


@pytest.fixture
def tiny_cfg():
    return EvaluatorConfig(widths=(8, 16), depths=(1, 1), feature_dim=32, joint_dim=16,
                           heads={"style": ["a", "b", "c"]}, multilabel={"shape": ["x", "y"]})


def test_forward_shapes_and_unit_embeddings(tiny_cfg):
    torch.manual_seed(0)
    model = Evaluator(tiny_cfg).eval()
    out = model(torch.rand(5, 3, 64, 64) * 2 - 1)
    assert out["features"].shape == (5, 32) and out["embed"].shape == (5, 16)
    assert out["head/style"].shape == (5, 3) and out["multi/shape"].shape == (5, 2)
    assert torch.allclose(out["embed"].norm(dim=1), torch.ones(5))
    text = model.text_embed(torch.randn(5, 384))
    assert torch.allclose(text.norm(dim=1), torch.ones(5))
    with pytest.raises(SwdError, match="MiniLM"):
        model.text_embed(torch.randn(5, 100))


def test_prepare_images_layouts_and_sizes():
    u8 = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    a = prepare_images(u8)
    assert a.shape == (2, 3, 64, 64) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(prepare_images(u8.permute(0, 3, 1, 2)), a)
    assert torch.equal(prepare_images(u8.numpy()), a)
    assert prepare_images(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 64, 64)
    # Area downscaling of a 128 px image made of 2x2 blocks gives the 64 px image back.
    assert torch.allclose(prepare_images(a.repeat_interleave(2, -1).repeat_interleave(2, -2)), a)
    with pytest.raises(SwdError, match="expected"):
        prepare_images(torch.zeros(2, 4, 64, 64))


def test_contrastive_loss_by_hand():
    e = torch.eye(2, dtype=torch.float64)
    # logits = 10 * I: each row's softmax picks its match with prob e^10 / (e^10 + 1).
    expected = -math.log(math.exp(10) / (math.exp(10) + 1))
    assert float(contrastive_loss(e, e, torch.tensor(math.log(10.0), dtype=torch.float64))) == pytest.approx(expected, rel=1e-6)
    # Swapped pairs: every row prefers the wrong column.
    swapped = float(contrastive_loss(e, e.flip(0), torch.tensor(math.log(10.0), dtype=torch.float64)))
    assert swapped == pytest.approx(-math.log(1 / (math.exp(10) + 1)), rel=1e-6)


def test_retrieval_counts_hits_among_distinct_captions():
    text = torch.eye(3)
    image = torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8], [0, 0, 1.0]])  # image 1 is nearer caption "c"
    r = retrieval(image, text, ["a", "b", "c"])
    assert r["i2t_top1"] == pytest.approx(2 / 3) and r["i2t_top5"] == 1.0
    assert r["t2i_top1"] == 1.0  # caption "b"'s nearest image is still image 1


def test_augment_is_seeded_and_keeps_range():
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    a = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, x)


def test_save_load_round_trip_in_small_shards(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    model = Evaluator(tiny_cfg)
    model.train()
    model(torch.rand(8, 3, 64, 64))  # move the BatchNorm running statistics off their init
    model.eval()
    save_evaluator(model, tmp_path, max_shard_bytes=60_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and all(p.stat().st_size < 60_000 + 4_096 for p in shards)
    loaded = load_evaluator(tmp_path)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    assert torch.equal(loaded.features(x), model.features(x))
    assert loaded.cfg.heads == tiny_cfg.heads


def test_load_errors(tmp_path):
    with pytest.raises(SwdError, match="no config.json"):
        load_evaluator(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"widths": [8, 16], "bogus": 1}))
    with pytest.raises(SwdError, match="unknown key"):
        load_evaluator(tmp_path)


def _tiny_shapes_set(n=96):
    from swd.data import ImageSet
    from swd.data.shapes import generate_shapes, render_shapes

    samples = generate_shapes(n, seed=5)
    records = [s.to_record() for s in samples]
    for i, r in enumerate(records):  # make sure both splits are present
        r["split"] = "heldout" if i % 8 == 0 else "train"
    return ImageSet(render_shapes(samples), records, {"name": "shapes"})


def test_tiny_training_run_writes_a_loadable_evaluator(tmp_path):
    pytest.importorskip("transformers")
    from swd.data.text import minilm_path

    try:
        minilm_path()
    except SwdError as err:
        pytest.skip(str(err))
    settings = TrainSettings(data="shapes", steps=2, batch_size=16, warmup_steps=1, threads=0)
    model, record = train_evaluator(settings, out=tmp_path, progress=False, image_set=_tiny_shapes_set())
    assert record["metrics"]["heldout"]["images"] == 12
    assert set(record["metrics"]["train_reserved"]) >= {"count_accuracy", "shape_exact_match", "color_exact_match", "i2t_top1"}
    loaded = load_evaluator(tmp_path)
    assert loaded.cfg.record["settings"]["steps"] == 2
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(loaded.features(x), model.eval().features(x))


SHIPPED = default_evaluator_dir("emoji")


@pytest.mark.skipif(not evaluator_available("emoji"), reason="no shipped emoji evaluator")
def test_shipped_weights_files_and_record():
    files = list(SHIPPED.iterdir())
    assert all(f.stat().st_size <= 16 * 2**20 for f in files)
    assert sum(f.stat().st_size for f in files) < 10 * 2**20
    record = load_evaluator(data="emoji").cfg.record
    held = record["metrics"]["heldout"]
    assert held["style_accuracy"] > 0.8 and held["i2t_top5"] > 0.05
    assert record["command"].startswith("swd eval train-evaluator")


@pytest.mark.skipif(not evaluator_available("emoji"), reason="no shipped emoji evaluator")
def test_shipped_evaluator_still_reads_heldout_styles():
    try:
        from swd.data.emoji import load_emoji

        held = load_emoji(split="heldout")
    except SwdError as err:
        pytest.skip(f"emoji set not built: {err}")
    evaluator = load_evaluator(data="emoji")
    rows = np.arange(0, len(held), 5)
    feats = extract(evaluator, held.tensors()[rows])
    pred = evaluator.heads["style"](feats).argmax(1)
    names = evaluator.cfg.heads["style"]
    truth = torch.tensor([names.index(held.records[i]["style"]) for i in rows])
    assert float((pred == truth).float().mean()) > 0.8
