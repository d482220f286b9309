"""Config loading and validation: YAML 1.1 numbers, file errors, ranges of the shipped recipes."""

import math
from pathlib import Path

import pytest

from swd.config import apply_overrides, dump_config, from_dict, load_config
from swd.errors import SwdError
from swd.train.teacher import TeacherConfig
from swd.train.validation import (
    check_device,
    check_distill_config,
    check_float,
    check_index_range,
    check_teacher_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("5E4", 5e4), ("-2e+2", -200.0), (".5e1", 5.0),
                                         ("3.0e-4", 3e-4), ("2", 2.0)])
def test_exponent_numbers_are_floats(text, value):
    cfg = from_dict(TeacherConfig, apply_overrides({}, [f"train.lr={text}"]))
    assert cfg.train.lr == value and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("text", ["fast", "1e", "e5", "nan", "1e-3x"])
def test_other_strings_are_still_not_numbers(text):
    with pytest.raises(SwdError, match="train.lr: expected a number"):
        from_dict(TeacherConfig, apply_overrides({}, [f"train.lr={text}"]))


def test_exponent_strings_stay_strings_in_integer_fields():
    with pytest.raises(SwdError, match="train.steps: expected an integer"):
        from_dict(TeacherConfig, apply_overrides({}, ["train.steps=1e3"]))


def test_optional_float_accepts_an_exponent():
    from swd.train.distill import DistillConfig

    assert from_dict(DistillConfig, {"losses": {"teacher_cfg": "4.5e0"}}).losses.teacher_cfg == 4.5


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train: {lr: \xff}\n")
    with pytest.raises(SwdError, match=r"bad\.yaml is not UTF-8"):
        load_config(TeacherConfig, bad)
    with pytest.raises(SwdError, match="is a folder"):
        load_config(TeacherConfig, tmp_path)
    with pytest.raises(SwdError, match="does not exist"):
        load_config(TeacherConfig, tmp_path / "none.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*/*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_pass_validation(path):
    from swd.train.distill import DistillConfig

    if path.parent.name == "schedules":  # scale schedules, validated on load
        from swd.schedules import ScaleSchedule

        schedule = ScaleSchedule.load(path)
        assert schedule.name == path.stem and schedule.final_size == (32, 32)
        return
    distill = "swd" in path.name or path.parent.name == "real"
    cfg = load_config(DistillConfig if distill else TeacherConfig, path)
    (check_distill_config if distill else check_teacher_config)(cfg)


def test_float_ranges():
    check_float(0.0, "x", 0.0)
    check_float(math.inf, "x", 0.0, lo_open=True, allow_inf=True)
    for value, kwargs in [(-1e-9, {"lo": 0.0}), (0.0, {"lo": 0.0, "lo_open": True}), (1.0, {"hi": 1.0, "hi_open": True}),
                          (math.nan, {"allow_inf": True}), (math.inf, {})]:
        with pytest.raises(SwdError, match="^x: "):
            check_float(value, "x", **kwargs)


def test_index_range_is_the_28_step_grid():
    check_index_range((0, 27), "i")
    check_index_range((27, 27), "i")
    for bad in [(0, 28), (5, 4), (-1, 3)]:
        with pytest.raises(SwdError, match="0 <= lo <= hi <= 27"):
            check_index_range(bad, "i")


def test_devices():
    check_device("auto")
    check_device("cpu")
    for name in ("banana", "cuda:99", "xla"):
        with pytest.raises(SwdError, match="^dev: "):
            check_device(name, "dev")


def test_objective_is_checked_when_the_config_loads(tmp_path):
    from swd.objectives import OBJECTIVES
    from swd.train.distill import DistillConfig

    path = tmp_path / "run.yaml"
    path.write_text("objective: gan-only\n")
    with pytest.raises(SwdError, match="^objective: must be one of swd, mmd-only, dmd-only, dmd2-full, got 'gan-only'$"):
        load_config(DistillConfig, path)
    for name in OBJECTIVES:
        assert load_config(DistillConfig, None, [f"objective={name}"]).objective == name


def test_distill_config_round_trips_through_yaml(tmp_path):
    from swd.train.distill import DistillConfig

    cfg = load_config(DistillConfig, None, ["objective=mmd-only", "losses.mmd_sigma_idx=[20, 27]",
                                            "train.steps=7", "generator.betas=[0.8, 0.95]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(DistillConfig, path)
    assert again == cfg and again.losses.mmd_sigma_idx == (20, 27) and again.generator.betas == (0.8, 0.95)
