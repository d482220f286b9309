"""SIGKILL a training process mid-run, resume it, and compare with an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from swd.train.checkpoint import list_checkpoints
from swd.train.distill import train_distill
from tests.train.test_distill import config, tiny_teacher
from tests.train.test_teacher import synthetic_data

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import sys, time
from pathlib import Path
import swd.train.distill as distill
from tests.train.test_distill import config, tiny_teacher
from tests.train.test_teacher import synthetic_data
tmp = Path(sys.argv[1])
cfg = config(tmp, "killed", "swd", steps=8, checkpoint_every=1)
# Slow each checkpoint down so the parent can kill between (or during) writes.
real_save = distill.save_checkpoint
def slow_save(*a, **k):
    out = real_save(*a, **k)
    time.sleep(0.5)
    return out
distill.save_checkpoint = slow_save
distill.train_distill(cfg, data=synthetic_data(), teacher=tiny_teacher())
"""


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and len(list_checkpoints(ckpts)) < 1 or (
        list_checkpoints(ckpts) and int(list_checkpoints(ckpts)[-1].name.split("_")[1]) < 3
    ):
        if child.poll() is not None:
            raise AssertionError(f"child exited early: {child.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = int(list_checkpoints(ckpts)[-1].name.split("_")[1])
    assert 3 <= killed_at < 8, "the kill must land mid-run"
    assert not (tmp_path / "killed" / "student").exists()

    # Same thread count as the child: CPU reductions are only bit-exact for equal thread counts.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed, straight = _finish_and_rerun(tmp_path)
    finally:
        torch.set_num_threads(threads)
    a = load_file(str(resumed.export_dir / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(straight.export_dir / "diffusion_pytorch_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def _finish_and_rerun(tmp_path):
    resumed = train_distill(config(tmp_path, "killed", "swd", steps=8, checkpoint_every=1), resume=True,
                            data=synthetic_data(), teacher=tiny_teacher())
    straight = train_distill(config(tmp_path, "straight", "swd", steps=8), data=synthetic_data(), teacher=tiny_teacher())
    return resumed, straight
