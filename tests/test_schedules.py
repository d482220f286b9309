import json

import pytest
from diffusers import FlowMatchEulerDiscreteScheduler

from swd.errors import SwdError
from swd.schedules import PRESETS, ScaleSchedule, flow_sigmas, get_preset, resolve_schedule

# SWD_SPEC section 1, printed to 4 decimals.
SPEC_GRID = [1.0, .9874, .9741, .9601, .9454, .9298, .9133, .8959, .8774, .8577, .8367, .8143, .7904,
             .7647, .7371, .7073, .6751, .6402, .6022, .5606, .5151, .4649, .4093, .3474, .278, .1998,
             .1109, .0089, 0.0]


def test_flow_grid_matches_diffusers_scheduler():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(28)
    ours = flow_sigmas(28, 3.0)
    theirs = sched.sigmas.tolist()
    assert len(ours) == len(theirs) == 29
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-6


def test_flow_grid_matches_spec_values():
    assert max(abs(a - b) for a, b in zip(flow_sigmas(), SPEC_GRID)) < 6e-4


def test_published_presets():
    large = get_preset("sd35-large-4")
    assert large.scales == ((64, 64), (80, 80), (96, 96), (128, 128))
    assert large.sigmas == pytest.approx([1.0, 0.8959, 0.7371, 0.6022], abs=1e-3)
    medium = get_preset("sd35-medium-6")
    assert [s[0] for s in medium.scales] == [32, 48, 64, 80, 96, 128]
    assert medium.sigmas == pytest.approx([1, .9454, .8959, .7904, .7371, .6022], abs=1e-3)
    wide = get_preset("sd35-medium-4-wide")
    assert wide.sigmas == pytest.approx([1, .9454, .7904, .6022], abs=1e-3)
    assert get_preset("flux-dev-4").scales == large.scales


def test_relative_cost_hand_values():
    # (1024 + 1600 + 2304 + 4096) / 4096 tokens at patch 2
    assert get_preset("sd35-large-4").relative_cost() == pytest.approx(9024 / 4096)
    assert get_preset("sd35-large-4").relative_cost() == pytest.approx(2.2, abs=0.01)
    assert get_preset("sd35-medium-6").relative_cost() == pytest.approx(2.41, abs=0.01)
    # text tokens are paid at every step, so they raise the relative cost
    with_text = get_preset("sd35-large-4").relative_cost(text_tokens=333)
    assert with_text == pytest.approx((9024 + 4 * 333) / (4096 + 333))
    assert get_preset("testbed-full-4").relative_cost() == pytest.approx(4.0)


def test_full_resolution_keeps_sigmas():
    s = get_preset("testbed-4")
    full = s.at_full_resolution()
    assert full.sigmas == s.sigmas
    assert set(full.scales) == {(64, 64)}
    assert not full.is_scale_wise and s.is_scale_wise


def test_rectangular_scales_and_int_shorthand():
    s = ScaleSchedule(scales=[16, (16, 24), [32, 48]], sigmas=[1.0, 0.8, 0.6])
    assert s.scales == ((16, 16), (16, 24), (32, 48))
    assert s.image_tokens(2) == [64, 96, 384]


@pytest.mark.parametrize(
    "scales,sigmas,message",
    [
        ([32, 48], [1.0], "lengths differ"),
        ([32, 48], [0.8, 0.9], "strictly decreasing"),
        ([32, 48], [1.0, 1.0], "strictly decreasing"),
        ([48, 32], [1.0, 0.5], "must not shrink"),
        ([32, 48], [1.2, 0.5], "(0, 1]"),
        ([32, 48], [1.0, 0.0], "(0, 1]"),
        ([32, "x"], [1.0, 0.5], "scales[1]"),
        ([], [], "at least one step"),
    ],
)
def test_validation_names_the_field(scales, sigmas, message):
    with pytest.raises(SwdError, match=None) as err:
        ScaleSchedule(scales=scales, sigmas=sigmas)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_check_model_patch_and_max_size():
    s = ScaleSchedule(scales=[33, 64], sigmas=[1.0, 0.5])
    with pytest.raises(SwdError, match="patch size 2"):
        s.check_model(patch_size=2)
    big = get_preset("sd35-large-4")
    big.check_model(patch_size=2, max_size=384)
    with pytest.raises(SwdError, match="largest latent side 96"):
        big.check_model(patch_size=2, max_size=96)


def test_from_boundaries_matches_grid():
    grid = flow_sigmas()
    s = ScaleSchedule.from_boundaries([8, 16], [0, 18])
    assert s.sigmas == (grid[0], grid[18])
    with pytest.raises(SwdError, match="boundaries\\[1\\]"):
        ScaleSchedule.from_boundaries([8, 16], [0, 28])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip(tmp_path, suffix):
    s = get_preset("sd35-medium-6")
    path = tmp_path / f"s{suffix}"
    s.save(path)
    loaded = ScaleSchedule.load(path)
    assert loaded.scales == s.scales
    assert loaded.sigmas == pytest.approx(s.sigmas, abs=1e-6)
    assert resolve_schedule(str(path)).name == "sd35-medium-6"


def test_boundaries_in_file(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("name: mine\nscales: [16, 32]\nboundaries: [0, 14]\n")
    s = ScaleSchedule.load(path)
    assert s.sigmas == pytest.approx((1.0, 0.7371), abs=1e-3)


@pytest.mark.parametrize(
    "text,message",
    [
        ("scales: [16, 32\n", "not valid YAML"),
        ("scales: [16, 32]\n", "missing key 'sigmas'"),
        ("scales: [16, 32]\nsigmas: [1.0, 0.5]\nsteps: 2\n", "unknown key"),
        ("- 1\n- 2\n", "expected a mapping"),
    ],
)
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SwdError) as err:
        ScaleSchedule.load(path)
    assert message in str(err.value)


def test_unknown_preset_lists_choices():
    with pytest.raises(SwdError) as err:
        get_preset("sd35-huge-3")
    assert "sd35-large-4" in str(err.value)


def test_all_presets_are_valid_and_json_serialisable():
    for name, s in PRESETS.items():
        assert s.name == name
        json.dumps(s.to_dict())
        assert s.steps == len(s.sigmas)


def test_swd_schedules_names_the_authors_checkpoint_of_each_preset(capsys):
    import json

    from swd.cli import main
    from swd.schedules import CHECKPOINTS

    assert set(CHECKPOINTS) <= set(PRESETS)
    assert main(["schedules", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    expected = {"sd35-large-4": "yresearch/swd-large-4-steps", "sd35-large-6": "yresearch/swd-large-6-steps",
                "sd35-medium-4": "yresearch/swd-medium-4-steps", "sd35-medium-6": "yresearch/swd-medium-6-steps",
                "flux-4": "yresearch/swd_flux", "sdxl-4": "yresearch/swd-sdxl", "testbed-4": None}
    assert {name: rows[name]["checkpoint"] for name in expected} == expected
    # The 6-step presets: the authors' README scales and sigmas (Large 6-step from its first version).
    for name in ("sd35-large-6", "sd35-medium-6"):
        assert [h for h, _ in PRESETS[name].scales] == [32, 48, 64, 80, 96, 128]
        assert [round(s, 4) for s in PRESETS[name].sigmas] == [1.0, 0.9454, 0.8959, 0.7904, 0.7371, 0.6022]
    assert PRESETS["sdxl-4"].sigmas == (1.0, 0.8, 0.6, 0.4)
