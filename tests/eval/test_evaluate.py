"""`swd eval run` end to end on a tiny random SD3 testbed model, and its input checks."""

import argparse
import json

import pytest
import torch

from swd.errors import SwdError
from swd.commands import evaluation as eval_commands
from swd.eval.evaluate import load_prompts, resolve_eval_schedule, text_tokens_of
from swd.schedules import get_preset


def _parser():
    parser = argparse.ArgumentParser(prog="swd")
    eval_commands.register(parser.add_subparsers(dest="command"))
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def _emoji_available():
    try:
        from swd.data.emoji import load_emoji

        load_emoji(split="heldout")
        from swd.data.text import minilm_path

        minilm_path()
        return True
    except SwdError:
        return False


needs_emoji = pytest.mark.skipif(not _emoji_available(), reason="emoji set or MiniLM not available")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from swd.models.testbed import MMDiTConfig, build_testbed_transformer

    torch.manual_seed(0)
    model = build_testbed_transformer(MMDiTConfig(width=32, head_dim=16, depth=1))
    folder = tmp_path_factory.mktemp("student")
    model.save_pretrained(folder)
    get_preset("testbed-4").save(folder / "schedule.yaml")
    return folder


@pytest.fixture(scope="module")
def evaluator_dir(tmp_path_factory):
    """The shipped evaluator when present; a small random one otherwise (the driver is tested)."""
    from swd.eval.evaluator import default_evaluator_dir, evaluator_available, save_evaluator
    from swd.models.evaluator import Evaluator, EvaluatorConfig

    if evaluator_available("emoji"):
        return default_evaluator_dir("emoji")
    torch.manual_seed(0)
    return save_evaluator(Evaluator(EvaluatorConfig()).eval(), tmp_path_factory.mktemp("evaluator"))


def test_schedule_resolution(tiny_model_dir, tmp_path):
    assert resolve_eval_schedule("teacher", tiny_model_dir) is None
    assert resolve_eval_schedule("model", tiny_model_dir).scales == get_preset("testbed-4").scales
    assert resolve_eval_schedule("testbed-6", None).name == "testbed-6"
    with pytest.raises(SwdError, match="no schedule.yaml"):
        resolve_eval_schedule("model", tmp_path)
    with pytest.raises(SwdError, match="unknown preset"):
        resolve_eval_schedule("nope", tiny_model_dir)


def test_text_tokens_from_the_run_config(tmp_path):
    (tmp_path / "teacher").mkdir()
    assert text_tokens_of(tmp_path / "teacher") == 16
    (tmp_path / "config.yaml").write_text("data: {name: emoji, text_tokens: 12}\n")
    assert text_tokens_of(tmp_path / "teacher") == 12


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(SwdError, match="prompts"):
        load_prompts("coco", 4)
    with pytest.raises(SwdError, match="n:"):
        load_prompts("emoji-heldout", 0)
    with pytest.raises(SwdError, match="not a saved model folder"):
        _run(["eval", "run", "--model", str(tmp_path), "--n", "2"])
    with pytest.raises(SwdError, match="--n"):
        _run(["eval", "run", "--model", str(tmp_path), "--n", "0"])


def test_scale_too_large_for_the_model_is_rejected(tiny_model_dir, evaluator_dir, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("scales: [64, 128]\nsigmas: [1.0, 0.6]\n")
    with pytest.raises(SwdError, match="exceeds"):
        _run(["eval", "run", "--model", str(tiny_model_dir), "--schedule", str(big), "--n", "2",
              "--evaluator", str(evaluator_dir), "--no-progress"])


@needs_emoji
def test_eval_run_end_to_end_is_reproducible(tiny_model_dir, evaluator_dir, tmp_path, capsys):
    argv = ["eval", "run", "--model", str(tiny_model_dir), "--prompts", "emoji-heldout", "--n", "4",
            "--batch-size", "2", "--seed", "3", "--evaluator", str(evaluator_dir), "--no-progress"]
    assert _run(argv + ["--out", str(tmp_path / "a")]) == 0
    assert _run(argv + ["--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (tmp_path / "a" / "samples.png").is_file()
    from PIL import Image

    assert Image.open(tmp_path / "a" / "strip.png").size == (4 * 64, 64)  # n = 4 images in one row
    assert a["metrics"] == b["metrics"]  # same seed, same images, same numbers
    assert a["seed"] == 3 and a["n"] == 4 and a["schedule"]["name"] == "testbed-4" and a["guidance"] == 1.0
    m = a["metrics"]
    assert m["fd"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert -1 <= m["text_alignment"] <= 1 and m["lap_swd"] > 0
    assert a["sampling_seconds_per_image"] > 0 and a["wall_seconds"] >= a["sampling_seconds"]
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["fd"] == pytest.approx(m["fd"], abs=1e-4)
    # One forward per scale of testbed-4, each counted alone.
    from swd.eval.evaluate import load_model
    from swd.eval.flops import arch_of_model, count_forward_flops

    arch = arch_of_model(load_model(tiny_model_dir)[0], text_tokens=16)
    assert a["flops_per_image"] == sum(count_forward_flops(arch, s) for s in (32, 40, 48, 64))
    assert summary["gflops_per_image"] == pytest.approx(a["flops_per_image"] / 1e9, abs=1e-3)


@needs_emoji
def test_teacher_sampler_and_shapes_prompts(tiny_model_dir, evaluator_dir, tmp_path):
    from swd.eval.evaluate import evaluate_model
    from swd.eval.evaluator import load_evaluator

    evaluator = load_evaluator(evaluator_dir)
    result = evaluate_model(tiny_model_dir, schedule="teacher", prompts="shapes", n=4, batch_size=4,
                            teacher_steps=2, guidance=2.0, evaluator=evaluator, out=tmp_path, progress=False)
    assert result["schedule"] == "teacher" and result["teacher_steps"] == 2 and result["guidance"] == 2.0
    from swd.eval.evaluate import load_model
    from swd.eval.flops import arch_of_model, count_forward_flops

    forward = count_forward_flops(arch_of_model(load_model(tiny_model_dir)[0], text_tokens=16), 64)
    assert result["flops_per_image"] == 2 * 2 * forward  # 2 steps, CFG doubles each
    shapes = result["metrics"]["shapes"]
    assert 0.0 <= shapes["accuracy"] <= 1.0 and shapes["per_category"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["shapes"] == shapes


@needs_emoji
def test_swd_eval_without_subcommand_is_eval_run(tiny_model_dir, evaluator_dir, tmp_path):
    from swd.cli import main, with_default_subcommand

    assert with_default_subcommand(["eval", "--help"]) == ["eval", "--help"]
    assert with_default_subcommand(["eval", "train-evaluator"]) == ["eval", "train-evaluator"]
    common = ["--model", str(tiny_model_dir), "--n", "4", "--batch-size", "4", "--evaluator", str(evaluator_dir),
              "--no-progress"]
    assert main(["eval", *common, "--out", str(tmp_path / "short")]) == 0
    assert main(["eval", "run", *common, "--out", str(tmp_path / "long")]) == 0
    short = json.loads((tmp_path / "short" / "metrics.json").read_text())
    long = json.loads((tmp_path / "long" / "metrics.json").read_text())
    assert short["metrics"] == long["metrics"] and short["n"] == 4


def test_balanced_order_takes_categories_in_turn():
    from swd.eval.evaluate import balanced_order

    cats = ["a", "a", "a", "b", "c", "a", "c"]
    order = balanced_order(cats)
    assert order == [0, 3, 4, 1, 6, 2, 5]  # a b c, a c, a, a
    assert sorted(order) == list(range(len(cats)))
    assert balanced_order([]) == []


@needs_emoji
def test_shapes_prompts_are_balanced_over_the_held_out_categories():
    from collections import Counter

    from swd.data.shapes import load_shapes

    _, held = load_shapes(split="heldout", progress=False)
    sizes = Counter(s.category for s in held)
    n = 10 * len(sizes)
    assert min(sizes.values()) >= 10  # so that n prompts can hold 10 of each
    counts = Counter(s.category for s in load_prompts("shapes", n).samples)
    assert counts == {category: 10 for category in sizes}


def test_at_sample_size_degrades_the_real_set_like_a_low_resolution_model():
    from swd.eval.evaluate import at_sample_size

    torch.manual_seed(0)
    small = torch.rand(2, 3, 32, 32) * 2 - 1
    # Images constant on 2x2 blocks lose nothing at 32 px: area-down then up recovers the blocks
    # away from the borders (bilinear interpolation blends neighbouring blocks, so compare means).
    blocky = small.repeat_interleave(2, -1).repeat_interleave(2, -2)
    back = at_sample_size(blocky, 32, 64)
    assert back.shape == (2, 3, 64, 64)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(back, 2)[..., 4:-4, 4:-4],
                               torch.nn.functional.avg_pool2d(
                                   at_sample_size(small, 32, 64), 2)[..., 4:-4, 4:-4])
    # A 32 px sample and its 64 px real counterpart land on the same 64 px image.
    torch.testing.assert_close(at_sample_size(small, 32, 64), at_sample_size(blocky, 32, 64))
    assert at_sample_size(blocky, None, 64) is blocky and at_sample_size(blocky, 64, 64) is blocky


def test_samples_below_the_data_size_are_scored_against_a_matching_real_set(evaluator_dir):
    from swd.eval.evaluate import at_sample_size, load_prompts, reference_for, score_samples
    from swd.eval.evaluator import load_evaluator

    evaluator = load_evaluator(evaluator_dir)
    prompts = load_prompts("shapes", 8)
    real_small = torch.nn.functional.interpolate(prompts.real_images[:8], size=(32, 32), mode="area")
    result = score_samples(real_small, prompts, evaluator, lap_swd=False)
    assert result["scored_at"] == 32
    ref = reference_for(prompts, evaluator, 32)
    assert ref.size == 32
    # The reference is the real set brought to 32 px: its first 8 features are exactly those of
    # the 32 px copies scored above, and FD is the hand-computed one on those features.
    from swd.eval.evaluator import extract
    from swd.eval.metrics import frechet_distance

    fake = extract(evaluator, at_sample_size(real_small, 32, 64), what="features")
    torch.testing.assert_close(ref.features[:8], fake, rtol=1e-4, atol=1e-5)
    assert result["fd"] == pytest.approx(frechet_distance(ref.features, fake), rel=1e-6)
    sharp = score_samples(prompts.real_images[:8], prompts, evaluator, lap_swd=False)
    assert sharp["scored_at"] == 64
