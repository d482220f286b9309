"""The moving-shapes video testbed and its exact scorer."""

import dataclasses

import numpy as np
import pytest

from swd.data.moving_shapes import (CLIP_SIZE, DIRECTIONS, FRAMES, SPEEDS, MovingObject, MovingSample, generate_clips,
                                     make_clip, render_clip, render_clips)
from swd.data.video_scoring import read_track, score_clips
from swd.data.scoring import Detection
from swd.errors import SwdError
from swd.schedules import latent_frames


@pytest.fixture(scope="module")
def clips():
    samples = generate_clips(200, seed=5)
    return samples, render_clips(samples)


def test_clips_are_deterministic_and_vae_sized(clips):
    samples, frames = clips
    assert frames.shape == (200, FRAMES, CLIP_SIZE, CLIP_SIZE, 3) and frames.dtype == np.uint8
    assert latent_frames(FRAMES) == 3  # 9 = 4 * 2 + 1 frames: the causal VAE's rule holds
    assert make_clip(5, 17) == samples[17]
    assert np.array_equal(render_clip(make_clip(5, 17)), frames[17])
    assert {len(s.objects) for s in samples} == {1, 2}
    two = [s for s in samples if len(s.objects) == 2]
    assert all(s.objects[0].color != s.objects[1].color for s in two)
    assert " and " in two[0].caption and two[0].caption.count("moving") == 2


def test_the_path_is_the_captioned_one():
    obj = MovingObject("square", "red", 20.0, (20.0, 30.0), "left", "quickly")
    x0 = obj.at(0).center
    x8 = obj.at(8).center
    assert x8[0] - x0[0] == pytest.approx(-4.0 * 8) and x8[1] == x0[1]
    assert obj.phrase == "a red square moving left quickly"


def test_clean_clips_score_at_least_98_percent(clips):
    samples, frames = clips
    report = score_clips(frames, samples, value_range=(0, 255))
    assert report.accuracy >= 0.98
    assert min(report.per_attribute.values()) >= 0.98
    # the pipelines' float frames in [0, 1] read the same
    assert score_clips(frames[:20] / 255.0, samples[:20]).accuracy == score_clips(frames[:20], samples[:20]).accuracy


def test_noise_scores_near_chance(clips):
    samples, frames = clips
    noise = np.random.default_rng(0).integers(0, 256, size=(40, *frames.shape[1:]), dtype=np.uint8)
    report = score_clips(noise, samples[:40], value_range=(0, 255))
    # chance of guessing shape x direction x speed of one object is 1/5 * 1/4 * 1/2 = 2.5%
    assert report.accuracy <= 0.05
    assert report.per_attribute["direction"] <= 0.35
    assert score_clips(np.full_like(frames, 255), samples).accuracy == 0.0  # blank white clips


def test_wrong_direction_speed_shape_are_caught(clips):
    samples, frames = clips
    opposite = {"right": "left", "left": "right", "up": "down", "down": "up"}
    other_speed = {"slowly": "quickly", "quickly": "slowly"}
    for change, attribute in ((lambda o: dataclasses.replace(o, direction=opposite[o.direction]), "direction"),
                              (lambda o: dataclasses.replace(o, speed=other_speed[o.speed]), "speed"),
                              (lambda o: dataclasses.replace(o, shape="circle" if o.shape != "circle" else "star"), "shape")):
        wrong = [MovingSample(tuple(change(o) for o in s.objects), s.frames) for s in samples[:60]]
        report = score_clips(frames[:60], wrong)
        assert report.accuracy <= 0.02
        assert report.per_attribute[attribute] <= 0.02


def test_a_still_clip_has_no_direction(clips):
    samples, frames = clips
    still = np.repeat(frames[:30, :1], FRAMES, axis=1)
    report = score_clips(still, samples[:30])
    assert report.accuracy == 0.0 and report.per_attribute["direction"] == 0.0
    assert report.per_attribute["color"] == 1.0


def test_track_velocity_by_hand():
    def det(x, y, shape="star"):
        return Detection(shape, "red", (x - 5, y - 5, x + 5, y + 5), 60, 0.4, 0.6, 0.5)

    # centres move +3 in x per frame with a missing frame: slope 3, "right" "quickly"
    per_frame = [[det(10, 20)], [det(13, 20)], [], [det(19, 20, "cross")], [det(22, 20)]]
    reading = read_track(per_frame, "red")
    assert reading.velocity == pytest.approx((3.0, 0.0))
    assert (reading.direction, reading.speed, reading.shape, reading.frames_found) == ("right", "quickly", "star", 4)
    up = read_track([[det(30, 40 - 2 * t)] for t in range(5)], "red")
    assert (up.direction, up.speed) == ("up", "slowly")
    assert read_track([[det(30, 40)]] * 5, "red").direction is None
    assert read_track([[]] * 5, "red").frames_found == 0


def test_bad_input():
    with pytest.raises(SwdError, match="samples"):
        score_clips(np.zeros((2, 9, 32, 32, 3), np.uint8), generate_clips(1))
    with pytest.raises(SwdError, match="clips"):
        score_clips(np.zeros((9, 32, 32, 3), np.uint8), generate_clips(1))
    with pytest.raises(SwdError, match="frames"):
        make_clip(frames=1)
    with pytest.raises(SwdError, match="do not fit"):
        make_clip(frames=40)
    assert {o.speed for s in generate_clips(30, frames=17) for o in s.objects} == {"slowly"}  # fast would leave
    assert set(DIRECTIONS) == {"left", "right", "up", "down"} and len(SPEEDS) == 2
