"""The CLI's error contract: expected failures are one `swd: error:` line (exit 2), bugs keep
their traceback and ask to be reported (exit 1), and no progress bar prints after the error.
And the command layer: every group registered, in order, none dropped by a failed import."""

import argparse
import errno
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import swd.cli as cli
import swd.commands.schedules as schedules_command

REPO = Path(__file__).resolve().parents[1]


def fail_with(exc):
    """A `swd schedules` whose command raises `exc` (the CLI's handling is what is tested)."""
    def command(args):
        raise exc

    return command


@pytest.fixture
def run_failing(monkeypatch, capsys):
    def run(exc):
        monkeypatch.setattr(schedules_command, "_cmd_schedules", fail_with(exc))
        code = cli.main(["schedules"])
        return code, capsys.readouterr().err

    return run


def _safetensors_error():
    from safetensors import SafetensorError

    return SafetensorError("Error while deserializing header: HeaderTooLarge")


def _yaml_error():
    import yaml

    try:
        yaml.safe_load("a: [b")
    except yaml.YAMLError as err:
        return err


@pytest.mark.parametrize("make, want", [
    (lambda: MemoryError(), "out of memory"),
    (lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: not enough memory: you tried "
                          "to allocate 49152000000 bytes."), "out of memory"),
    (lambda: RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"), "out of memory"),
    (lambda: OSError(errno.ENOSPC, "No space left on device", "/runs/x/log.jsonl"), "/runs/x/log.jsonl: No space left"),
    (lambda: PermissionError(errno.EACCES, "Permission denied", "/etc/x"), "/etc/x: Permission denied"),
    (lambda: IsADirectoryError(errno.EISDIR, "Is a directory", "docs"), "docs: Is a directory"),
    (lambda: OSError("It looks like the config file at 'm/config.json' is not a valid JSON file.\nmore"),
     "m/config.json"),
    (lambda: b"\xff".decode("utf-8"), "not UTF-8"),
    (lambda: json.loads("{x"), "not valid JSON"),
    (_safetensors_error, "corrupt or truncated"),
    (_yaml_error, "not valid YAML"),
], ids=["memory-error", "cpu-alloc", "cuda-oom", "disk-full", "permission", "is-a-directory", "diffusers-oserror",
        "unicode", "json", "safetensors", "yaml"])
def test_expected_failures_are_one_line(run_failing, make, want):
    try:
        exc = make()
    except Exception as raised:  # the decoders raise instead of returning
        exc = raised
    code, err = run_failing(exc)
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("swd: error:") and want in err, err


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(run_failing):
    code, err = run_failing(ZeroDivisionError("division by zero"))
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("swd: internal error:") and "report" in err
    assert "swd: error:" not in err


def test_runtime_errors_other_than_memory_are_bugs(run_failing):
    code, err = run_failing(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert code == 1 and "Traceback" in err


def test_progress_bar_does_not_print_after_the_error(monkeypatch, capsys):
    from tqdm.auto import tqdm

    from swd.errors import SwdError

    def command(args):
        bar = tqdm(total=10, desc="work")
        bar.update(3)
        raise SwdError("train.lr: must be >= 0, got -1.0")  # the bar is left open, as a crashing loop leaves it

    monkeypatch.setattr(schedules_command, "_cmd_schedules", command)
    assert cli.main(["schedules"]) == 2
    gc.collect()  # an unclosed bar would print its last state now
    err = capsys.readouterr().err
    assert "work" in err
    assert err.rstrip("\n").split("\n")[-1].split("\r")[-1].startswith("swd: error: train.lr")


def test_messages_are_one_line_whatever_they_hold(run_failing):
    from swd.errors import SwdError

    code, err = run_failing(SwdError("model: cannot load it (first\nsecond)"))
    assert code == 2 and err == "swd: error: model: cannot load it (first second)\n"


def test_command_groups_give_the_commands_in_order():
    from swd.commands import COMMAND_GROUPS

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["schedules", "bench", "data", "train-teacher", "distill", "export", "sample", "demo",
                                 "eval", "report", "app"]
    assert all(callable(group.register) for group in COMMAND_GROUPS)
    bench = next(a for a in sub.choices["bench"]._actions if isinstance(a, argparse._SubParsersAction))
    assert list(bench.choices) == ["flops", "latency"]


def test_a_command_module_that_fails_to_import_is_not_skipped():
    """A broken `swd.*` import stops the CLI with its error instead of silently dropping a command."""
    code = "import sys; sys.modules['swd.commands.report'] = None; import swd.cli"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr and "swd.commands.report" in proc.stderr


def test_schedules_lists_every_preset(capsys):
    from swd.schedules import PRESETS

    assert cli.main(["schedules", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(PRESETS)
    assert all(r["steps"] == len(r["sigmas"]) == len(r["scales"]) for r in rows)
