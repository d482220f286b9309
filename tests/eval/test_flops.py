"""FLOP counts checked against hand counts from the config and an independent hook-based count."""

import json

import pytest
import torch
from torch import nn

from swd.cli import main
from swd.eval.flops import (
    ForwardFlopCounter,
    build_meta_adapter,
    count_forward_flops,
    format_report,
    sampling_flops,
)
from swd.models.base import TextCondition
from swd.models.configs import ARCHS
from swd.schedules import ScaleSchedule

TIMESTEP_CHANNELS = 256  # diffusers' SD3 sinusoidal timestep embedding width


def attention_flops(batch, heads, head_dim, tokens):
    """QK^T and AV of one attention layer: 2 matmuls of 2 * B * heads * N * N * head_dim FLOPs."""
    return 4 * batch * heads * tokens * tokens * head_dim


def hand_count_sd3(cfg, h, w, text_tokens, batch=1):
    """FLOPs of an SD3Transformer2DModel forward, from its config alone (no dual attention)."""
    assert not cfg.get("dual_attention_layers")
    p, d = cfg["patch_size"], cfg["num_attention_heads"] * cfg["attention_head_dim"]
    assert cfg["caption_projection_dim"] == d
    n_img, n_txt = (h // p) * (w // p), text_tokens

    def lin(tokens, fan_in, fan_out):
        return 2 * batch * tokens * fan_in * fan_out

    conv = 2 * batch * n_img * cfg["in_channels"] * p * p * d  # patch embedding
    linear = (
        lin(1, TIMESTEP_CHANNELS, d) + lin(1, d, d)  # timestep MLP
        + lin(1, cfg["pooled_projection_dim"], d) + lin(1, d, d)  # pooled text MLP
        + lin(n_txt, cfg["joint_attention_dim"], d)  # context embedder
        + lin(1, d, 2 * d) + lin(n_img, d, p * p * cfg["out_channels"])  # norm_out, proj_out
    )
    for i in range(cfg["num_layers"]):
        last = i == cfg["num_layers"] - 1  # the last block only updates image tokens
        linear += lin(1, d, 6 * d)  # image adaLN-zero
        linear += lin(1, d, 2 * d) if last else lin(1, d, 6 * d)  # text adaLN
        linear += 3 * lin(n_img, d, d) + 3 * lin(n_txt, d, d)  # q, k, v of both streams
        linear += lin(n_img, d, d) + lin(n_img, d, 4 * d) + lin(n_img, 4 * d, d)  # out, MLP
        if not last:
            linear += lin(n_txt, d, d) + lin(n_txt, d, 4 * d) + lin(n_txt, 4 * d, d)
    attention = cfg["num_layers"] * attention_flops(batch, cfg["num_attention_heads"], cfg["attention_head_dim"],
                                                    n_img + n_txt)
    return {"conv": conv, "linear": linear, "attention": attention}


def hook_count(arch, size, batch=1):
    """An independent count: nn.Linear / nn.Conv2d forward hooks plus the attention formula."""
    adapter = build_meta_adapter(arch)
    cfg = adapter.config
    total = {"linear": 0, "conv": 0}

    def on_linear(m, inputs, out):
        total["linear"] += 2 * (inputs[0].numel() // m.in_features) * m.in_features * m.out_features

    def on_conv(m, inputs, out):
        kh, kw = m.kernel_size
        total["conv"] += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    for m in adapter.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(on_linear)
        elif isinstance(m, nn.Conv2d):
            m.register_forward_hook(on_conv)
    meta = torch.device("meta")
    x = torch.empty(batch, adapter.latent_channels, *size, device=meta)
    cond = TextCondition(torch.empty(batch, arch.text_tokens, cfg.joint_attention_dim, device=meta),
                         torch.empty(batch, cfg.pooled_projection_dim, device=meta))
    with torch.no_grad():
        adapter(x, torch.ones(batch, device=meta), cond)

    n_img = (size[0] // adapter.patch_size) * (size[1] // adapter.patch_size)
    joint = attention_flops(batch, cfg.num_attention_heads, cfg.attention_head_dim, n_img + arch.text_tokens)
    if arch.family == "flux":  # double- and single-stream blocks both attend over text + image
        total["attention"] = (cfg.num_layers + cfg.num_single_layers) * joint
    else:  # MMDiT-X blocks add a second, image-only attention
        dual = len(cfg.dual_attention_layers)
        total["attention"] = cfg.num_layers * joint + dual * attention_flops(
            batch, cfg.num_attention_heads, cfg.attention_head_dim, n_img)
    return total


@pytest.mark.parametrize("size", [(8, 8), (16, 16), (8, 24), (32, 32)])
def test_tiny_sd3_forward_equals_hand_count(size):
    arch = ARCHS["tiny-sd3"]
    by_op = ForwardFlopCounter(arch).count_by_op(size)
    hand = hand_count_sd3(arch.transformer, *size, arch.text_tokens)
    assert by_op["aten.convolution"] == hand["conv"]
    assert by_op["aten.bmm"] == hand["attention"]  # SDPA's math path on meta
    assert by_op.get("aten.addmm", 0) + by_op.get("aten.mm", 0) == hand["linear"]
    assert sum(by_op.values()) == sum(hand.values())


@pytest.mark.parametrize("arch_name", ["tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize("size", [(8, 8), (16, 24)])
def test_flop_counter_matches_hooks_and_attention_formula(arch_name, size):
    arch = ARCHS[arch_name]
    counter = ForwardFlopCounter(arch)
    hooks = hook_count(arch, size)
    assert counter.count(size) == sum(hooks.values())
    assert counter.attention_flops(size) == hooks["attention"]


@pytest.mark.parametrize("arch_name", ["tiny-sd3", "tiny-flux"])
def test_attention_is_counted_and_quadratic(arch_name):
    counter = ForwardFlopCounter(ARCHS[arch_name])
    small, big = counter.attention_flops((8, 8)), counter.attention_flops((16, 16))
    n_small, n_big = 16 + 6, 64 + 6  # image + text tokens
    assert small > 0 and big * n_small**2 == small * n_big**2
    # Total FLOPs grow faster than the token count.
    assert counter.count((16, 16)) / counter.count((8, 8)) > n_big / n_small


def test_cfg_batch_of_two_costs_twice():
    counter = ForwardFlopCounter(ARCHS["tiny-sd3"])
    assert counter.count((16, 16), batch=2) == 2 * counter.count((16, 16))


def test_sampling_flops_sums_per_size_counts():
    arch = ARCHS["tiny-sd3"]
    sched = ScaleSchedule(scales=(8, 16, 16, 32), sigmas=(1.0, 0.9, 0.7, 0.5), name="t")
    f = {s: count_forward_flops(arch, s) for s in (8, 16, 32)}

    report = sampling_flops(arch, sched, teacher_steps=28, cfg=True)
    assert report.swd.flops == f[8] + 2 * f[16] + f[32]
    assert (report.swd.steps, report.swd.forwards) == (4, 4)
    assert report.full.flops == 4 * f[32] and report.full.scales == ((32, 32),) * 4
    assert report.teacher.flops == 28 * 2 * f[32] and report.teacher.forwards == 56
    assert report.swd_over_full_ratio == pytest.approx(report.swd.flops / (4 * f[32]))
    assert report.swd_over_teacher_ratio == pytest.approx(report.swd.flops / (56 * f[32]))
    assert [(s.size, s.swd_steps) for s in report.per_scale] == [((8, 8), 1), ((16, 16), 2), ((32, 32), 1)]
    assert report.token_ratio == pytest.approx((16 + 2 * 64 + 256) / (4 * 256))

    no_cfg = sampling_flops(arch, sched, teacher_steps=10, cfg=False)
    assert no_cfg.teacher.flops == 10 * f[32] and no_cfg.teacher.forwards == 10
    # By default the teacher's CFG follows the arch: tiny and FLUX-dev have none, SD3.5 has.
    assert sampling_flops(arch, sched).teacher_cfg is False

    d = report.to_dict()
    json.dumps(d)
    assert d["swd_over_full_ratio"] == report.swd_over_full_ratio
    assert d["runs"]["teacher"]["forwards"] == 56
    text = format_report(report)
    assert "teacher 28 steps + CFG" in text and "SwD (t)" in text


def run_cli(capsys, *argv):
    try:
        rc = main(["bench", "flops", *argv])
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_table_with_schedule_file(capsys, tmp_path):
    path = tmp_path / "s.yaml"
    ScaleSchedule(scales=(8, 16), sigmas=(1.0, 0.6), name="file-sched").save(path)
    rc, out, err = run_cli(capsys, "--arch", "tiny-flux", "--schedule", str(path), "--teacher-steps", "5")
    assert rc == 0, err
    assert "SwD (file-sched)" in out and "full resolution 16x16" in out and "teacher 5 steps" in out
    assert "counting" in err


def test_cli_json_sd35_large(capsys):
    rc, out, err = run_cli(capsys, "--arch", "sd35-large", "--schedule", "sd35-large-4", "--json")
    assert rc == 0, err
    data = json.loads(out)
    # SWD_SPEC: 2.2 of 4 full-resolution steps in image tokens; text tokens and attention shift it.
    assert 0.50 <= data["swd_over_full_ratio"] <= 0.60
    assert data["image_token_ratio"] == (1024 + 1600 + 2304 + 4096) / (4 * 4096)  # "2.2" of 4 steps
    assert data["teacher_cfg"] is True and data["runs"]["teacher"]["forwards"] == 56
    full = data["per_scale"][-1]
    assert full["size"] == [128, 128] and full["image_tokens"] == 4096
    assert data["swd_over_teacher_ratio"] == pytest.approx(data["runs"]["swd"]["flops"] / (56 * full["flops"]))
    # Attention of the real config: 38 joint layers of 38 heads x 64 over 4096 + 333 tokens.
    assert full["attention_flops"] == 38 * attention_flops(1, 38, 64, 4096 + 333)


@pytest.mark.parametrize("argv, field", [
    (["--arch", "sd99"], "arch"),
    (["--arch", "tiny-sd3", "--schedule", "no-such-preset"], "schedule"),
    (["--arch", "tiny-sd3"], "--schedule"),  # tiny configs have no default schedule
    (["--arch", "tiny-sd3", "--schedule", "missing.yaml"], "schedule file"),
    (["--arch", "tiny-sd3", "--schedule", "testbed-4", "--teacher-steps", "0"], "--teacher-steps"),
    (["--arch", "tiny-sd3", "--schedule", "sd35-large-4"], "exceeds"),  # 128 > largest side 32
    ([], "--arch"),
])
def test_cli_bad_input_one_line_exit_2(capsys, argv, field):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("swd: error:") and field in err
    assert "Traceback" not in err and out == ""


def test_cli_schedule_not_divisible_by_patch(capsys, tmp_path):
    path = tmp_path / "odd.json"
    ScaleSchedule(scales=(128, 129), sigmas=(1.0, 0.6), name="odd").save(path)
    rc, out, err = run_cli(capsys, "--arch", "sd35-large", "--schedule", str(path))
    assert rc == 2 and err.count("\n") == 1
    assert "129" in err and "patch size 2" in err and out == ""


def test_bench_without_subcommand_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_model_sampling_flops_of_a_testbed_model_equals_hand_count():
    """A concrete (testbed) model is counted from its own config: the scale-wise run sums one hand
    count per scale, the teacher runs 28 steps x 2 forwards (CFG) at the sample size."""
    from swd.eval.flops import model_sampling_flops
    from swd.models.testbed import MMDiTConfig, build_testbed_transformer

    model = build_testbed_transformer(MMDiTConfig(width=32, head_dim=16, depth=2))
    cfg = dict(model.config)

    def hand(size):
        return sum(hand_count_sd3(cfg, size, size, text_tokens=16).values())

    sched = ScaleSchedule(scales=[32, 48, 64], sigmas=[1.0, 0.8, 0.6])
    assert model_sampling_flops(model, sched, text_tokens=16) == hand(32) + hand(48) + hand(64)
    assert model_sampling_flops(model, None, text_tokens=16, guidance=4.5) == 28 * 2 * hand(cfg["sample_size"])
    assert model_sampling_flops(model, None, text_tokens=16, teacher_steps=4, guidance=1.0) == 4 * hand(64)
