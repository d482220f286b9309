import pytest
import torch

from swd.cli import main
from swd.eval.latency import bench_sampling, time_call
from swd.errors import SwdError
from swd.schedules import get_preset

from tests.conftest import make_cond


class CountingAdapter(torch.nn.Module):
    """Records the latent sizes and batch of every forward; predicts zero velocity."""

    latent_channels = 3
    patch_size = 2
    max_latent_size = None

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, sigma, cond):
        self.calls.append((tuple(x.shape[-2:]), x.shape[0], cond.batch_size))
        return torch.zeros_like(x)


def test_bench_runs_each_sampler_with_the_right_forwards():
    adapter = CountingAdapter()
    cond, uncond = make_cond(1, joint=4, pooled=4), make_cond(1, joint=4, pooled=4, seed=2)
    rows = bench_sampling(adapter, cond, uncond, [get_preset("testbed-4")], torch.device("cpu"), torch.float32,
                          teacher_steps=3, teacher_cfg=4.5, warmup=1, repeats=2)
    assert [r.label for r in rows] == ["teacher 3 steps + CFG 4.5", "full resolution 4 steps", "SwD testbed-4"]
    # (1 warm-up + 2 timed) runs each: teacher 3 CFG forwards of batch 2, full 4 x 64 px, SwD 32..64 px
    teacher_calls, rest = adapter.calls[:9], adapter.calls[9:]
    assert all(c == ((64, 64), 2, 2) for c in teacher_calls)
    assert [c[0][0] for c in rest[:12]] == [64] * 12
    assert [c[0][0] for c in rest[12:]] == [32, 40, 48, 64] * 3
    swd, full, teacher = rows[2], rows[1], rows[0]
    assert swd.ratio_to_full == pytest.approx(swd.seconds / full.seconds)
    assert teacher.ratio_to_teacher == pytest.approx(1.0)
    assert len(swd.all_seconds) == 2


def test_time_call_counts_and_validates():
    calls = []
    times = time_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)
    with pytest.raises(SwdError, match="repeats"):
        time_call(lambda: None, torch.device("cpu"), repeats=0)


def test_cli_tiny_arch_json(tmp_path, capsys):
    sched = tmp_path / "s.yaml"
    sched.write_text("scales: [8, 12, 16]\nsigmas: [1.0, 0.8, 0.6]\nname: tiny\n")
    assert main(["bench", "latency", "--arch", "tiny-sd3", "--schedules", str(sched), "--teacher-steps", "2",
                 "--repeats", "1", "--warmup", "0", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in out["rows"]] == ["teacher 2 steps", "full resolution 3 steps", "SwD tiny"]


@pytest.mark.parametrize("argv,message", [
    (["bench", "latency", "--arch", "sd35-large"], "needs a CUDA GPU"),
    (["bench", "latency"], "exactly one of --arch"),
    (["bench", "latency", "--arch", "tiny-sd3", "--schedules", "testbed-4"], "exceeds"),
])
def test_cli_errors(argv, message, capsys):
    if "cuda" in message.lower() and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(argv) == 2
    assert message in capsys.readouterr().err
