"""Two CPU processes (gloo) train one student: the replicas must stay identical, and must differ
from a one-process run (each rank draws its own batch; their gradients are averaged).

The workers are fresh interpreters started the way `accelerate launch` starts them (RANK,
WORLD_SIZE, MASTER_ADDR/PORT in the environment), not forks of the test process: a fork
inherits OpenMP thread pools and accelerate's singleton state, and can hang."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from swd.train.distill import train_distill
from tests.train.test_distill import config, tiny_teacher
from tests.train.test_teacher import synthetic_data

REPO = Path(__file__).resolve().parents[2]
WORKER = """
import json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from swd.train.distill import train_distill
from tests.train.test_distill import config, tiny_teacher
from tests.train.test_teacher import synthetic_data
tmp = Path(sys.argv[1])
# max_minutes > 0 runs the per-step agreement on stopping (a broadcast from rank 0).
result = train_distill(config(tmp, "ddp", "swd", steps=2, max_minutes=60), data=synthetic_data(), teacher=tiny_teacher())
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
state = {**result.generator.state_dict(), **{"gan_head." + k: v for k, v in result.fake.head.state_dict().items()}}
save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / f"rank{rank}.safetensors"))
(tmp / f"rank{rank}.json").write_text(json.dumps({"world": world}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_keep_identical_replicas(tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "ACCELERATE_USE_CPU": "true", "GLOO_SOCKET_IFNAME": "lo"}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], cwd=REPO, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        try:
            _, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("distributed workers timed out")
        assert p.returncode == 0, err.decode()[-3000:]
    assert json.loads((tmp_path / "rank1.json").read_text())["world"] == 2
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    assert any(k.startswith("gan_head.") for k in a)  # the GAN heads (seeded from the run) agree too
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_distill(config(tmp_path, "single", "swd", steps=2), data=synthetic_data(), teacher=tiny_teacher())
    finally:
        torch.set_num_threads(threads)
    s = single.generator.state_dict()
    assert any(not torch.allclose(a[k], s[k]) for k in s), "two ranks must see different batches"
