"""FLOP counts of Wan2.1 (meta device) against a closed form, and `swd bench flops --arch wan2.1-*`."""

import json
import math

import pytest

from swd.eval.flops import count_forward_flops, sampling_flops
from swd.models.configs import get_arch


def wan_forward_flops(config: dict, size, text_tokens: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one batch-1 Wan forward, written out from the architecture."""
    patch = math.prod(config["patch_size"])
    T = math.prod(v // p for v, p in zip(size, config["patch_size"]))
    L = text_tokens
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f, c, td, fd = config["ffn_dim"], config["in_channels"], config["text_dim"], config["freq_dim"]
    embed = 2 * T * c * patch * d                         # Conv3d patch embedding
    time = 2 * (fd * d + d * d) + 2 * d * 6 * d           # timestep MLP and its 6-way projection
    text = 2 * L * (td * d + d * d)                       # text projection MLP on L tokens
    self_attn = 4 * 2 * T * d * d + 4 * T * T * d         # q, k, v, out; QK^T and AV
    cross = 2 * 2 * T * d * d + 2 * 2 * L * d * d + 4 * T * L * d
    ffn = 4 * T * d * f
    out = 2 * T * d * config["out_channels"] * patch
    return embed + time + text + config["num_layers"] * (self_attn + cross + ffn) + out


@pytest.mark.parametrize("arch_name, size", [("tiny-wan", (2, 4, 6)), ("tiny-wan", (3, 8, 4)),
                                             ("wan2.1-1.3b", (21, 60, 104)), ("wan2.1-14b", (6, 20, 34))])
def test_wan_forward_equals_closed_form(arch_name, size):
    arch = get_arch(arch_name)
    assert count_forward_flops(arch, size) == wan_forward_flops(arch.transformer, size, arch.text_tokens)


def test_wan_sampling_flops_paper_schedule():
    report = sampling_flops("wan2.1-1.3b")
    arch = get_arch("wan2.1-1.3b")
    per = [wan_forward_flops(arch.transformer, s, 512) for s in report.schedule.scales]
    assert report.swd.flops == sum(per)
    assert report.full.flops == 4 * per[-1]
    assert report.teacher.forwards == 100 and report.teacher.flops == 100 * per[-1]  # 50 steps + CFG
    assert report.swd_over_full_ratio == pytest.approx(sum(per) / (4 * per[-1]))


def test_cli_bench_flops_wan_json(capsys):
    from swd.cli import main

    assert main(["bench", "flops", "--arch", "wan2.1-14b", "--schedule", "wan-space-4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schedule"]["scales"][0] == [21, 20, 34]
    assert data["runs"]["teacher"]["steps"] == 50 and data["runs"]["teacher"]["forwards"] == 100
    assert 0 < data["swd_over_full_ratio"] < 1


def test_cli_image_schedule_on_wan_is_one_line(capsys):
    from swd.cli import main

    assert main(["bench", "flops", "--arch", "wan2.1-1.3b", "--schedule", "sd35-large-4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swd: error:") and "video model" in err and "Traceback" not in err
