"""`swd data build|info`, through an argparse parser like the project's CLI."""

import argparse

import pytest

from swd.commands.data import register
from swd.errors import SwdError


def run(*argv):
    parser = argparse.ArgumentParser(prog="swd")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_build_and_info_shapes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWD_CACHE", str(tmp_path))
    assert run("data", "build", "shapes", "--n", "30", "--seed", "4") == 0
    assert (tmp_path / "shapes-64-s4-n30.npz").is_file()
    assert run("data", "info", "shapes", "--n", "30", "--seed", "4") == 0
    out = capsys.readouterr().out
    assert '"images": 30' in out and "shapes-64-s4-n30.npz" in out


def test_build_to_out_dir(tmp_path):
    assert run("data", "build", "shapes", "--n", "12", "--out", str(tmp_path / "x")) == 0
    assert (tmp_path / "x" / "shapes-64-s0-n12.npz").is_file()


def test_mistakes_raise_swd_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SWD_CACHE", str(tmp_path))
    with pytest.raises(SwdError, match="--seed"):
        run("data", "build", "emoji", "--seed", "3")
    with pytest.raises(SwdError, match="no dataset"):
        run("data", "info", "emoji")
    with pytest.raises(SwdError, match="name"):
        run("data", "info", "nonsense")
    with pytest.raises(SwdError, match="n:"):
        run("data", "build", "shapes", "--n", "0")
    with pytest.raises(SystemExit):
        run("data", "build", "cats")
