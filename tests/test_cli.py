"""The CLI's error contract: expected failures are one `swd: error:` line (exit 2), bugs keep
their traceback and ask to be reported (exit 1), and no progress bar prints after the error."""

import errno
import gc
import json

import pytest

import swd.cli as cli


def fail_with(exc):
    """A `swd schedules` whose command raises `exc` (the CLI's handling is what is tested)."""
    def command(args):
        raise exc

    return command


@pytest.fixture
def run_failing(monkeypatch, capsys):
    def run(exc):
        monkeypatch.setattr(cli, "_cmd_schedules", fail_with(exc))
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

    monkeypatch.setattr(cli, "_cmd_schedules", command)
    assert cli.main(["schedules"]) == 2
    gc.collect()  # an unclosed bar would print its last state now
    err = capsys.readouterr().err
    assert "work" in err
    assert err.rstrip("\n").split("\n")[-1].split("\r")[-1].startswith("swd: error: train.lr")


def test_messages_are_one_line_whatever_they_hold(run_failing):
    from swd.errors import SwdError

    code, err = run_failing(SwdError("model: cannot load it (first\nsecond)"))
    assert code == 2 and err == "swd: error: model: cannot load it (first second)\n"
