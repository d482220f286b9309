"""The shapes set and its exact scorer: determinism, metadata, and the scorer's accuracy."""

import numpy as np
import pytest
import torch

from swd.data import ImageSet, read_image_set
from swd.data.scoring import SampleScore, ShapesReport, detect_objects, score_shapes
from swd.data.shapes import (
    CATEGORIES,
    COLORS,
    SHAPES,
    build_shapes,
    generate_shapes,
    load_shapes,
    make_sample,
    render_shapes,
)
from swd.errors import SwdError

PER_CATEGORY = 200


@pytest.fixture(scope="module")
def scenes():
    samples = generate_shapes(PER_CATEGORY * len(CATEGORIES), seed=11)
    return samples, render_shapes(samples)


def test_samples_are_deterministic_and_prefix_stable():
    a, b = generate_shapes(12, seed=5), generate_shapes(30, seed=5)
    assert [s.to_record() for s in a] == [s.to_record() for s in b[:12]]
    assert [s.caption for s in generate_shapes(12, seed=6)] != [s.caption for s in a]
    assert np.array_equal(render_shapes(a), render_shapes(b[:12]))


def test_metadata_matches_the_caption(scenes):
    samples, _ = scenes
    for s in samples:
        assert 1 <= len(s.objects) <= 4 and s.claims and s.category in CATEGORIES
        assert all(o.shape in SHAPES and o.color in COLORS for o in s.objects)
        assert all(0 <= v <= 64 for o in s.objects for v in o.bbox)
    counting = [s for s in samples if s.category == "counting"]
    words = {2: "two", 3: "three", 4: "four"}
    assert all(
        s.caption.startswith(words[len(s.objects)]) and len({o.shape for o in s.objects}) == 1
        for s in counting
    )
    color_attr = next(s for s in samples if s.category == "color_attr")
    a, b = color_attr.objects
    article = {c: "an" if c == "orange" else "a" for c in COLORS}
    assert (
        color_attr.caption
        == f"{article[a.color]} {a.color} {a.shape} and {article[b.color]} {b.color} {b.shape}"
    )
    assert {s.category for s in samples} == set(CATEGORIES)


def test_scorer_is_exact_on_clean_renders(scenes):
    samples, images = scenes
    report = score_shapes(images, samples)
    assert len(report.scores) == PER_CATEGORY * len(CATEGORIES)
    for category, accuracy in report.per_category.items():
        assert accuracy >= 0.98, (category, accuracy)
    # Every drawn object is found once, with its colour and shape.
    for sample, score in zip(samples[:60], report.scores[:60]):
        found = sorted((d.shape, d.color) for d in score.detections)
        assert found == sorted((o.shape, o.color) for o in sample.objects)


def test_scorer_is_near_chance_on_noise_and_mismatched_images(scenes):
    samples, images = scenes
    rng = np.random.default_rng(0)
    few = samples[: 100 * len(CATEGORIES)]
    noise = rng.integers(0, 256, (len(few), 64, 64, 3), dtype=np.uint8)
    assert score_shapes(noise, few).accuracy < 0.05
    # Images of other captions: the chance level of this caption distribution.
    shuffled = score_shapes(images[rng.permutation(len(samples))][: len(few)], few)
    assert shuffled.accuracy < 0.2
    assert shuffled.per_category["single_object"] < 0.45  # ~1/5 shapes, plus multi-object images


def test_scorer_reads_floats_tensors_and_other_sizes(scenes):
    samples, images = scenes
    few, batch = samples[:24], images[:24]
    as_float = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, 64, 64) in [-1, 1]
    assert score_shapes(as_float, few).accuracy == 1.0
    big = np.repeat(np.repeat(batch, 2, axis=1), 2, axis=2)  # 128 px
    assert score_shapes(big.astype(np.float32) / 255, few, value_range=(0, 1)).accuracy == 1.0
    with pytest.raises(SwdError, match="samples"):
        score_shapes(batch, few[:3])


def test_position_claim_fails_when_mirrored(scenes):
    samples, images = scenes
    pairs = [(s, im) for s, im in zip(samples, images) if s.category == "position"][:30]
    # Mirroring across the named axis swaps the relation; shapes and colours stay the same.
    axis = {"left of": 1, "right of": 1, "above": 0, "below": 0}
    mirrored = np.stack([np.flip(im, axis[s.claims[0].relation]) for s, im in pairs])
    assert score_shapes(mirrored, [s for s, _ in pairs]).accuracy == 0.0


def test_detects_a_known_scene():
    sample = make_sample("colors", seed=0, index=3)
    (found,) = detect_objects(render_shapes([sample])[0])
    (drawn,) = sample.objects
    assert (found.shape, found.color) == (drawn.shape, drawn.color)
    assert np.allclose(found.bbox, drawn.bbox, atol=1.0)


def test_build_and_load_round_trip(tmp_path):
    path = build_shapes(tmp_path, n=60, seed=2, progress=False)
    data, samples = load_shapes(tmp_path, n=60, seed=2)
    assert path.name == "shapes-64-s2-n60.npz" and len(data) == 60
    assert np.array_equal(data.images, render_shapes(generate_shapes(60, seed=2)))
    assert [s.caption for s in samples] == data.captions
    x = data.tensors()
    assert x.shape == (60, 3, 64, 64) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    heldout = data.select("heldout")
    assert set(heldout.splits) <= {"heldout"} and len(heldout) + len(data.select("train")) == 60
    assert score_shapes(read_image_set(path).images, samples).accuracy == 1.0


def test_user_errors_name_the_field():
    with pytest.raises(SwdError, match="n:"):
        generate_shapes(0)
    with pytest.raises(SwdError, match="category"):
        make_sample("bogus")
    with pytest.raises(SwdError, match="split"):
        ImageSet(np.zeros((0, 64, 64, 3), np.uint8), [], {}).select("test")


def test_shapes_report_summaries_by_hand():
    report = ShapesReport([SampleScore("count", [True, True], []), SampleScore("count", [True, False], []),
                           SampleScore("colour", [True], [])])
    assert report.accuracy == pytest.approx(2 / 3)
    assert report.per_category == {"colour": 1.0, "count": 0.5}
    assert report.geneval_score == pytest.approx(0.75)  # each category weighs the same
    empty = ShapesReport()
    assert np.isnan(empty.accuracy) and empty.per_category == {} and np.isnan(empty.geneval_score)
