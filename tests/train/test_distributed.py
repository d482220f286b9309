"""Two CPU processes (gloo) train one student: the replicas must stay identical."""

import torch
from accelerate import debug_launcher
from safetensors.torch import load_file, save_file

from swd.train.distill import train_distill
from tests.train.test_distill import config, tiny_teacher
from tests.train.test_teacher import synthetic_data


def _worker(tmp_path):
    torch.set_num_threads(1)
    result = train_distill(config(tmp_path, "ddp", "swd", steps=2), data=synthetic_data(), teacher=tiny_teacher())
    rank = torch.distributed.get_rank()
    state = {k: v.contiguous() for k, v in result.generator.state_dict().items()}
    save_file(state, str(tmp_path / f"rank{rank}.safetensors"))


def test_two_processes_keep_identical_replicas(tmp_path):
    debug_launcher(_worker, args=(tmp_path,), num_processes=2)
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    teacher = tiny_teacher().state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # and training did move them (each rank saw different data, gradients were averaged)
    assert any(not torch.equal(a[k], teacher[k]) for k in a)
