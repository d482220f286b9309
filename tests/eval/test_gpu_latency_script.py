"""scripts/gpu_latency.sh on the CPU (SWD_LATENCY_SMOKE=1): the GPU script's own commands, tiny configs.

It runs every `swd bench latency` line of the script (SD3 and FLUX families, eager and compiled,
and the shipped testbed student), so a renamed flag or a broken compiled path fails here, not on
the first GPU a session gets.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gpu_latency_script_smoke(tmp_path):
    env = {**os.environ, "SWD_LATENCY_SMOKE": "1", "SWD": f"{sys.executable} -m swd.cli",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_latency.sh"), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for arch in ("tiny-sd3", "tiny-flux"):
        rows = json.loads((tmp_path / f"latency-{arch}.json").read_text())["rows"]
        assert [(r["mode"], r["label"]) for r in rows] == [
            (mode, label) for mode in ("eager", "compiled")
            for label in ("teacher 2 steps", "full resolution 2 steps", "SwD smoke-2")]
        for r in rows:
            assert r["seconds"] > 0 and r["batch"] == 1
            assert (r["compile_seconds"] is None) == (r["mode"] == "eager")
        swd = [r for r in rows if r["label"] == "SwD smoke-2"]
        assert all(r["ratio_to_full"] == pytest.approx(r["seconds"] / f["seconds"])
                   for r, f in zip(swd, [r for r in rows if r["label"].startswith("full")]))
    testbed = json.loads((tmp_path / "latency-testbed.json").read_text())
    assert [r["label"] for r in testbed["rows"]] == ["full resolution 2 steps", "SwD smoke-2"]
