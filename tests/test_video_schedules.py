"""Spatio-temporal (frames, h, w) schedules beside the image ones."""

import pytest

from swd.errors import SwdError
from swd.schedules import PRESETS, ScaleSchedule, get_preset, latent_frames, pixel_frames, resolve_schedule


def test_causal_vae_frame_rule():
    # (frames - 1) // 4 + 1: 21 / 41 / 61 / 81 pixel frames are 6 / 11 / 16 / 21 latent frames
    assert [latent_frames(f) for f in (1, 5, 21, 41, 61, 81)] == [1, 2, 6, 11, 16, 21]
    assert [pixel_frames(t) for t in (1, 2, 6, 11, 16, 21)] == [1, 5, 21, 41, 61, 81]
    with pytest.raises(SwdError, match="4k \\+ 1.*use 77 or 81"):
        latent_frames(80)
    with pytest.raises(SwdError, match="positive int"):
        latent_frames(0)


def test_wan_presets_match_the_paper_end_points_in_pixels():
    wan = get_preset("wan-4")
    assert wan.is_video and wan.steps == 4
    # SWD_SPEC section 5: 21 x 160 x 272 -> 81 x 480 x 832 frames x H x W
    assert wan.pixel_sizes()[0] == (21, 160, 272)
    assert wan.pixel_sizes()[-1] == (81, 480, 832)
    assert all((f - 1) % 4 == 0 for f, _, _ in wan.pixel_sizes())
    space = get_preset("wan-space-4")
    assert {s[0] for s in space.scales} == {21}
    assert space.final_size == wan.final_size


def test_video_tokens_and_relative_cost_by_hand():
    wan = get_preset("wan-4")
    # patch (1, 2, 2): 6*10*17, 11*17*29, 16*23*40, 21*30*52
    tokens = [1020, 5423, 14720, 32760]
    assert wan.image_tokens((1, 2, 2)) == tokens
    assert wan.image_tokens(2) == tokens  # an int patches h and w, one frame per token
    assert wan.relative_cost((1, 2, 2)) == pytest.approx(sum(tokens) / 32760)
    assert wan.relative_cost((1, 2, 2), text_tokens=512) == pytest.approx((sum(tokens) + 4 * 512) / (32760 + 512))
    assert wan.at_full_resolution().relative_cost((1, 2, 2)) == pytest.approx(4.0)
    assert wan.image_tokens((2, 2, 2))[0] == 3 * 10 * 17


def test_image_schedules_unchanged():
    large = get_preset("sd35-large-4")
    assert not large.is_video
    assert large.scales == ((64, 64), (80, 80), (96, 96), (128, 128))
    assert large.relative_cost() == pytest.approx(9024 / 4096)
    large.check_model(2, 192)
    with pytest.raises(SwdError, match="exceeds"):
        large.check_model(2, 100)


def test_video_schedule_checked_against_the_model():
    wan = get_preset("wan-4")
    wan.check_model((1, 2, 2), (1024, 2048, 2048))
    with pytest.raises(SwdError, match="frames 11, not divisible by the transformer's patch size 2"):
        wan.check_model((2, 2, 2), None, what="transformer")
    with pytest.raises(SwdError, match="exceeds the model's largest latent size 16x64x64"):
        wan.check_model((1, 2, 2), (16, 64, 64))
    with pytest.raises(SwdError, match="image model"):
        wan.check_model(2, 192)
    with pytest.raises(SwdError, match="video model"):
        get_preset("sd35-large-4").check_model((1, 2, 2), None)


@pytest.mark.parametrize("scales, message", [
    ([[2, 4, 4], [4, 4]], "mixes image"),
    ([[3, 4, 4], [2, 8, 8]], "must not shrink"),
    ([[0, 4, 4], [2, 8, 8]], "positive"),
    ([[1, 2, 3, 4], [2, 8, 8]], "expected an int"),
])
def test_bad_video_scales(scales, message):
    with pytest.raises(SwdError, match=message):
        ScaleSchedule(scales=scales, sigmas=[1.0, 0.5])


def test_video_schedule_file_round_trip(tmp_path):
    s = ScaleSchedule(scales=[[2, 4, 6], [3, 8, 12]], sigmas=[1.0, 0.6], name="v")
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"v{suffix}"
        s.save(path)
        assert resolve_schedule(str(path)) == s
    assert resolve_schedule(str(path)).scales == ((2, 4, 6), (3, 8, 12))


def test_presets_list_in_cli(capsys):
    from swd.cli import main

    assert main(["schedules"]) == 0
    out = capsys.readouterr().out
    assert "6x20x34, 11x34x58, 16x46x80, 21x60x104" in out
    assert "64, 80, 96, 128" in out
    assert set(PRESETS) >= {"wan-4", "wan-space-4"}
