"""Two CPU processes (gloo) train one student: the replicas must stay identical, and must differ
from a one-process run (each rank draws its own batch; their gradients are averaged)."""

import json

import torch
from accelerate import debug_launcher
from accelerate.state import AcceleratorState, PartialState
from safetensors.torch import load_file, save_file

from swd.train.distill import train_distill
from tests.train.test_distill import config, tiny_teacher
from tests.train.test_teacher import synthetic_data


def _reset_accelerate():
    # accelerate keeps process state in singletons; a forked child must not inherit the parent's
    # single-process state from earlier tests.
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def _worker(tmp_path):
    torch.set_num_threads(1)
    _reset_accelerate()
    result = train_distill(config(tmp_path, "ddp", "swd", steps=2), data=synthetic_data(), teacher=tiny_teacher())
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    state = {k: v.contiguous() for k, v in result.generator.state_dict().items()}
    save_file(state, str(tmp_path / f"rank{rank}.safetensors"))
    (tmp_path / f"rank{rank}.json").write_text(json.dumps({"world": world}))


def test_two_processes_keep_identical_replicas(tmp_path):
    debug_launcher(_worker, args=(tmp_path,), num_processes=2)
    _reset_accelerate()
    assert json.loads((tmp_path / "rank1.json").read_text())["world"] == 2
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    single = train_distill(config(tmp_path, "single", "swd", steps=2), data=synthetic_data(), teacher=tiny_teacher())
    s = {k: v for k, v in single.generator.state_dict().items()}
    assert any(not torch.allclose(a[k], s[k]) for k in a), "two ranks must see different batches"
