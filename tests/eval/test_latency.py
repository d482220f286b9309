import pytest
import torch

from swd.cli import main
from swd.eval.latency import bench_sampling, time_call, time_interleaved
from swd.errors import SwdError
from swd.schedules import ScaleSchedule, get_preset

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
    # (1 warm-up + 2 timed) runs each: teacher 3 CFG forwards of batch 2; then full-res (4 x 64 px)
    # and SwD (32..64 px) warmed up once each and timed interleaved: full, SwD, full, SwD.
    teacher_calls, rest = adapter.calls[:9], adapter.calls[9:]
    assert all(c == ((64, 64), 2, 2) for c in teacher_calls)
    full, swd = [64] * 4, [32, 40, 48, 64]
    assert [c[0][0] for c in rest] == full + swd + full + swd + full + swd
    swd, full, teacher = rows[2], rows[1], rows[0]
    assert swd.ratio_to_full == pytest.approx(swd.seconds / full.seconds)
    assert teacher.ratio_to_teacher == pytest.approx(1.0)
    assert len(swd.all_seconds) == 2


def test_bench_without_schedules_times_the_teacher_at_the_model_size():
    """The teacher row goes through `sample`: with no schedule to take a size from, it runs at the
    model's own sample size (the direct sampler call this replaced was given size None)."""
    from types import SimpleNamespace

    adapter = CountingAdapter()
    adapter.config = SimpleNamespace(sample_size=24)
    cond, uncond = make_cond(1, joint=4, pooled=4), make_cond(1, joint=4, pooled=4, seed=2)
    rows = bench_sampling(adapter, cond, uncond, [], torch.device("cpu"), torch.float32, teacher_steps=2,
                          teacher_cfg=1.0, warmup=0, repeats=1)
    assert [r.label for r in rows] == ["teacher 2 steps"] and rows[0].batch_per_forward == 1
    assert adapter.calls == [((24, 24), 1, 1)] * 2  # CFG 1: one conditional forward per step


def test_time_interleaved_alternates_the_calls():
    calls = []
    times = time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], torch.device("cpu"),
                             warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4 and [len(t) for t in times] == [3, 3]


class ConvAdapter(torch.nn.Module):
    """A one-layer convolutional denoiser: cheap to compile, but a real graph for inductor."""

    latent_channels = 3
    patch_size = 2
    max_latent_size = None

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, sigma, cond):
        return self.conv(x) * (1 + sigma.view(-1, 1, 1, 1)) + cond.pooled.mean()


def test_bench_settings_times_every_mode_batch_and_thread_count():
    """Rows for each (threads, batch, mode); compiled rows record compile time once per new shape."""
    from swd.eval.latency import bench_settings

    sched = ScaleSchedule(scales=(4, 8), sigmas=(1.0, 0.6), name="two")
    previous = torch.get_num_threads()
    rows = bench_settings(ConvAdapter(), lambda b: (make_cond(b, joint=4, pooled=4), make_cond(b, joint=4, pooled=4)),
                          [sched], torch.device("cpu"), torch.float32, batches=[1, 2], threads=[1, 2],
                          modes=["eager", "compiled"], teacher_steps=0, warmup=0, repeats=1)
    assert torch.get_num_threads() == previous
    assert [(r.threads, r.batch, r.mode, r.label) for r in rows] == [
        (t, b, m, label) for t in (1, 2) for b in (1, 2) for m in ("eager", "compiled")
        for label in ("full resolution 2 steps", "SwD two")]
    for r in rows:
        assert r.ratio_to_full is None if r.label.startswith("full") else r.ratio_to_full > 0
        assert (r.compile_seconds is None) == (r.mode == "eager")
    compiled = [r for r in rows if r.mode == "compiled"]
    # Full-res compiles 8 px; SwD then only adds 4 px. Graphs are rebuilt for each thread count.
    assert all(r.compile_seconds > 0 for r in compiled)
    assert rows[1].ms_per_image == pytest.approx(rows[1].seconds * 1000)


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
