import json

import pytest
import torch
from safetensors.torch import load_file

from swd.config import from_dict
from swd.errors import SwdError
from swd.models.testbed import MMDiTConfig, build_testbed_transformer
from swd.sampling import upsample
from swd.schedules import ScaleSchedule
from swd.objectives import objective_class
from swd.train.distill import DistillConfig, make_scale_batch, train_distill

from tests.train.test_teacher import synthetic_data

SCHED = {"scales": [8, 12, 16], "sigmas": [1.0, 0.8, 0.6]}


def tiny_teacher(seed=0):
    torch.manual_seed(seed)
    return build_testbed_transformer(MMDiTConfig(sample_size=16, patch_size=2, width=32, head_dim=16, depth=2))


def config(tmp_path, run, objective="swd", steps=3, **train):
    sched_file = tmp_path / "sched.yaml"
    ScaleSchedule(**SCHED, name="tiny").save(sched_file)
    return from_dict(DistillConfig, {
        "run_dir": str(tmp_path / run), "schedule": str(sched_file), "objective": objective,
        "losses": {"feature_block": 0, "teacher_cfg": 2.0},
        "generator": {"lr": 1e-3}, "fake": {"lr": 1e-3},
        "train": {"steps": steps, "batch_size": 3, "fake_updates": 2, "device": "cpu", "precision": "fp32",
                  "log_every": 1, "sample_every": 1000, "checkpoint_every": 2, **train},
    })


def test_training_pair_built_by_hand():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    sched = ScaleSchedule(**SCHED)
    data = synthetic_data(n=2)
    cond = data.train_condition(torch.tensor([0, 1]))
    gen = torch.Generator().manual_seed(0)
    batch = make_scale_batch(images, cond, sched, 2, gen, "cpu")
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lower = torch.nn.functional.interpolate(images, size=(12, 12), mode="area")
    expected = 0.4 * upsample(lower, (16, 16), "bicubic") + 0.6 * eps
    torch.testing.assert_close(batch.x_in, expected)
    torch.testing.assert_close(batch.target, images)  # s_2 is the full size
    assert torch.equal(batch.sigma, torch.full((2,), 0.6))
    first = make_scale_batch(images, cond, sched, 0, torch.Generator().manual_seed(0), "cpu")
    assert first.x_in.shape == (2, 3, 8, 8)  # pure noise at the first scale
    torch.testing.assert_close(first.target, torch.nn.functional.interpolate(images, size=(8, 8), mode="area"))


def test_objectives_switch_losses():
    cfg = DistillConfig()
    for objective, on in [("swd", {"dmd", "mmd", "gan"}), ("mmd-only", {"mmd"}), ("dmd-only", {"dmd", "gan"}),
                          ("dmd2-full", {"dmd", "gan"})]:
        cfg.objective = objective
        assert {k for k, w in objective_class(cfg.objective).loss_weights(cfg.losses).items() if w > 0} == on
    with pytest.raises(SwdError, match="objective"):
        objective_class("gan-only")
    with pytest.raises(SwdError, match="objective"):  # and a config naming it is refused when it loads
        from_dict(DistillConfig, {"objective": "gan-only"})


@pytest.mark.parametrize("objective", ["swd", "mmd-only", "dmd2-full"])
def test_each_objective_trains_and_exports(tmp_path, objective):
    out = train_distill(config(tmp_path, objective, objective, steps=2), data=synthetic_data(), teacher=tiny_teacher()).export_dir
    log = [json.loads(l) for l in (tmp_path / objective / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    expected = {"swd": {"dmd", "mmd", "gan"}, "mmd-only": {"mmd"}, "dmd2-full": {"dmd", "gan"}}[objective]
    assert expected <= set(log[0]) and not ({"dmd", "mmd", "gan"} - expected) & set(log[0])
    if objective == "dmd2-full":
        assert {r["scale"] for r in log} == {16}
    else:
        assert [r["scale"] for r in log] == [8, 12]  # round robin
    assert (out / "schedule.yaml").exists() and (out / "config.json").exists()


def test_generator_moves_and_teacher_stays(tmp_path):
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = train_distill(config(tmp_path, "m", "swd", steps=2), data=synthetic_data(), teacher=teacher).export_dir
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    student = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(student[k], before[k]) for k in before)


def test_resume_matches_uninterrupted(tmp_path):
    data = synthetic_data()
    a = train_distill(config(tmp_path, "a", steps=4), data=data, teacher=tiny_teacher()).export_dir
    train_distill(config(tmp_path, "b", steps=2), data=data, teacher=tiny_teacher())
    b = train_distill(config(tmp_path, "b", steps=4), resume=True, data=data, teacher=tiny_teacher()).export_dir
    sa = load_file(str(a / "diffusion_pytorch_model.safetensors"))
    sb = load_file(str(b / "diffusion_pytorch_model.safetensors"))
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_lora_generator_trains_only_adapters(tmp_path):
    cfg = config(tmp_path, "lora", "mmd-only", steps=2)
    cfg.generator.lora_rank = 4
    teacher = tiny_teacher()
    out = train_distill(cfg, data=synthetic_data(), teacher=teacher).export_dir
    student = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert set(student) == set(teacher.state_dict())  # merged back into plain weights
    changed = [k for k in student if not torch.equal(student[k], teacher.state_dict()[k])]
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out", "add_", "ff")) for k in changed)


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    import swd.objectives as objectives

    monkeypatch.setattr(objectives, "build_mmd_loss", lambda *a, **k: (lambda real, fake: fake.sum() * float("nan")))
    with pytest.raises(SwdError, match="diverged"):
        train_distill(config(tmp_path, "nan", "mmd-only", steps=3), data=synthetic_data(), teacher=tiny_teacher())


def test_mmd_only_with_fake_features_is_rejected(tmp_path):
    cfg = config(tmp_path, "x", "mmd-only")
    cfg.losses.feature_source = "fake"
    with pytest.raises(SwdError, match="feature_source"):
        train_distill(cfg, data=synthetic_data(), teacher=tiny_teacher())


def test_tensorboard_scalars_per_loss_and_scale(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_distill(config(tmp_path, "tb", "mmd-only", steps=2), data=synthetic_data(), teacher=tiny_teacher())
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"mmd/scale_8", "mmd/scale_12"} <= tags
    assert [e.step for e in acc.Scalars("mmd/scale_8")] == [1]


def test_in_training_evaluation_matches_eval_and_leaves_training_unchanged(tmp_path):
    from tests.eval.test_evaluate import _emoji_available

    if not _emoji_available():
        pytest.skip("emoji set or MiniLM not available")
    from swd.eval.evaluate import evaluate_model, training_evaluation

    def teacher64():  # the evaluator and the Laplacian SWD compare with the 64 px held-out set
        torch.manual_seed(0)
        return build_testbed_transformer(MMDiTConfig(sample_size=64, patch_size=4, width=32, head_dim=16, depth=2))

    sched = tmp_path / "sched64.yaml"
    ScaleSchedule(scales=[32, 48, 64], sigmas=[1.0, 0.8, 0.6]).save(sched)
    data = synthetic_data(size=64)
    cfg = config(tmp_path, "evald", "swd", steps=3, eval_every=2, eval_n=8)
    cfg.data.name, cfg.schedule = "emoji", str(sched)
    out = train_distill(cfg, data=data, teacher=teacher64(), evaluation=training_evaluation(cfg)).export_dir
    log = [json.loads(line) for line in (tmp_path / "evald" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]  # start, every 2, last
    for r in evals:
        assert r["eval"]["fd"] > 0 and 0 <= r["eval"]["precision"] <= 1 and r["eval"]["n_fake"] == 8
    assert evals[0]["eval"]["fd"] != evals[-1]["eval"]["fd"]  # the weights moved
    # Step 0 is the untrained generator, a copy of the teacher: the standalone evaluation of the
    # teacher with the same prompts, seed and schedule gives the same number.
    alone = evaluate_model(teacher64(), schedule=str(sched), n=8, seed=0, precision="fp32",
                           device="cpu", progress=False)
    assert evals[0]["eval"]["fd"] == pytest.approx(alone["metrics"]["fd"], rel=1e-6)
    # Sampling for evaluation draws from its own generator: the trained weights are bit-identical
    # to a run without evaluation.
    cfg = config(tmp_path, "plain", "swd", steps=3)
    cfg.schedule = str(sched)
    plain = train_distill(cfg, data=data, teacher=teacher64()).export_dir
    a = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(plain / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_in_training_evaluation_scores_the_ema_that_is_exported(tmp_path):
    from tests.eval.test_evaluate import _emoji_available

    if not _emoji_available():
        pytest.skip("emoji set or MiniLM not available")
    from swd.eval.evaluate import evaluate_model, training_evaluation

    torch.manual_seed(0)
    teacher = build_testbed_transformer(MMDiTConfig(sample_size=64, patch_size=4, width=32, head_dim=16, depth=1))
    sched = tmp_path / "sched64.yaml"
    ScaleSchedule(scales=[32, 64], sigmas=[1.0, 0.6]).save(sched)
    cfg = config(tmp_path, "ema", "mmd-only", steps=2, eval_every=2, eval_n=6, ema_decay=0.5)
    cfg.data.name, cfg.schedule = "emoji", str(sched)
    out = train_distill(cfg, data=synthetic_data(size=64), teacher=teacher, evaluation=training_evaluation(cfg)).export_dir
    last = [json.loads(line) for line in (tmp_path / "ema" / "log.jsonl").read_text().splitlines()][-1]
    alone = evaluate_model(out, n=6, seed=0, precision="fp32", device="cpu", progress=False)
    assert last["step"] == 2 and last["eval"]["fd"] == pytest.approx(alone["metrics"]["fd"], rel=1e-6)


@pytest.mark.parametrize("change, match", [
    ({"eval_every": -1}, "eval_every"),
    ({"eval_every": 1, "eval_n": 3}, "eval_n >= 4"),
    ({"eval_every": 1, "data": "embeddings"}, "held-out"),
    ({"eval_every": 1}, "evaluation callback"),
])
def test_in_training_evaluation_rejects_bad_settings(tmp_path, change, match):
    from swd.eval.evaluate import training_evaluation

    change = dict(change)
    data_name = change.pop("data", None)
    cfg = config(tmp_path, "bad", "mmd-only", **change)
    with pytest.raises(SwdError, match=match):
        if data_name:  # the testbed's evaluation refuses other data (swd distill builds it first)
            cfg.data.name = data_name
            training_evaluation(cfg)
        train_distill(cfg, data=synthetic_data(), teacher=tiny_teacher())
    assert not (tmp_path / "bad" / "log.jsonl").exists()  # refused before anything was written


def test_fake_score_can_start_from_a_wider_network(tmp_path):
    from swd.train.distill import build_models

    torch.manual_seed(1)
    wide = build_testbed_transformer(MMDiTConfig(sample_size=16, patch_size=2, width=48, head_dim=16, depth=2))
    wide_before = {k: v.clone() for k, v in wide.state_dict().items()}
    cfg = config(tmp_path, "wide", "swd", steps=2)
    models = build_models(cfg, tiny_teacher(), fake_init=wide)
    assert models.fake.transformer.config.num_attention_heads == 3  # 48 / 16: the wide network, not the teacher
    assert models.generator.config.num_attention_heads == 2
    for k, v in models.fake.transformer.state_dict().items():
        assert torch.equal(v, wide_before[k]), k  # a copy of fake_init, in float32
    assert models.fake.head.widths[0] == 48  # the GAN head reads the wide network's features
    train_distill(cfg, data=synthetic_data(), teacher=tiny_teacher(), fake_init=wide)
    saved = load_file(str(tmp_path / "wide" / "checkpoints" / "step_00000002" / "fake.safetensors"))
    trained = {k[len("transformer."):]: v for k, v in saved.items() if k.startswith("transformer.")}
    assert trained.keys() == wide_before.keys()
    assert any(not torch.equal(trained[k], wide_before[k]) for k in trained)  # the fake score trained
    assert all(torch.equal(wide.state_dict()[k], wide_before[k]) for k in wide_before)  # the caller's untouched
    lora = config(tmp_path, "wide-lora", "swd", steps=1)
    lora.fake.lora_rank = 4
    with pytest.raises(SwdError, match="fake.lora_rank"):
        train_distill(lora, data=synthetic_data(), teacher=tiny_teacher(), fake_init=wide)


def test_lr_cool_down_is_logged_and_resumes_bit_for_bit(tmp_path):
    data = synthetic_data()

    def cooled(run, steps):
        cfg = config(tmp_path, run, "dmd-only", steps=steps)
        cfg.generator.decay_start, cfg.generator.decay_steps = 1, 2
        cfg.fake.decay_start, cfg.fake.decay_steps = 1, 2
        return cfg

    a = train_distill(cooled("a", 4), data=data, teacher=tiny_teacher()).export_dir
    logged = [json.loads(line)["lr"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([1e-3, 1e-3, 5e-4, 0.0])  # by hand: 1e-3 * (1 - (step - 1) / 2)
    train_distill(cooled("b", 2), data=data, teacher=tiny_teacher())
    b = train_distill(cooled("b", 4), resume=True, data=data, teacher=tiny_teacher()).export_dir
    sa = load_file(str(a / "diffusion_pytorch_model.safetensors"))
    sb = load_file(str(b / "diffusion_pytorch_model.safetensors"))
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_negative_cool_down_is_rejected(tmp_path):
    cfg = config(tmp_path, "n")
    cfg.fake.decay_steps = -3
    with pytest.raises(SwdError, match="fake.decay_start and fake.decay_steps"):
        train_distill(cfg, data=synthetic_data(), teacher=tiny_teacher())


def test_frozen_patterns_keep_those_weights_and_train_the_rest(tmp_path):
    cfg = config(tmp_path, "f", "dmd-only", steps=2)
    cfg.generator.frozen = [r"\.ff\.", r"\.ff_context\."]
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = train_distill(cfg, data=synthetic_data(), teacher=teacher).export_dir
    student = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    ff = [k for k in student if ".ff." in k or ".ff_context." in k]
    assert ff and all(torch.equal(student[k], before[k]) for k in ff)
    assert any(not torch.equal(student[k], before[k]) for k in student if k not in ff)


def test_frozen_with_a_lora_is_rejected_by_validation(tmp_path):
    from swd.train.validation import check_distill_config

    cfg = config(tmp_path, "lora-frozen", "mmd-only")
    cfg.generator.lora_rank, cfg.generator.frozen = 4, [r"\.ff\."]
    with pytest.raises(SwdError, match="generator.frozen: applies to a full fine-tune"):
        check_distill_config(cfg)


@pytest.mark.parametrize("frozen, match", [([r"no_such_layer"], "matches no parameter"), ([r"."], "freeze every"),
                                           ([r"("], "not a regular expression"), ("ff", "expected a list")])
def test_bad_frozen_patterns_are_one_line_errors(tmp_path, frozen, match):
    cfg = config(tmp_path, "bad", "mmd-only", steps=1)
    cfg.generator.frozen = frozen
    with pytest.raises(SwdError, match=f"generator.frozen: .*{match}"):
        train_distill(cfg, data=synthetic_data(), teacher=tiny_teacher())
