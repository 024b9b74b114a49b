"""The command line: every subcommand is listed and documented, and errors are one line."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from fastddpm.cli import ORDER, build_parser, main

SUBCOMMANDS = list(ORDER)  # train sample eval export plot bench demo
PLOTS = ["schedules", "forward", "forward-path", "reverse", "samples", "loss"]


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _all_parsers(parser, path=()):
    for name, child in _subparsers(parser).items():
        yield path + (name,), child
        yield from _all_parsers(child, path + (name,))


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_every_subcommand():
    # Through the real entry point, as a user types it.
    proc = subprocess.run([sys.executable, "-m", "fastddpm", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in proc.stdout, f"'{name}' missing from fastddpm --help:\n{proc.stdout}"
    assert "unavailable" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("argv", [[c] for c in SUBCOMMANDS] + [["plot", p] for p in PLOTS],
                         ids=lambda a: " ".join(a))
def test_help_exits_0_and_shows_defaults(argv, capsys):
    code, out, err = _run(argv + ["--help"], capsys)
    assert code == 0, err
    assert out.startswith(f"usage: fastddpm {' '.join(argv)}")
    assert "--quiet" in out and "--debug" in out


def test_every_option_documents_its_default():
    for path, parser in _all_parsers(build_parser()):
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), path
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            # ArgumentDefaultsHelpFormatter prints the default only for options that have help.
            assert action.help and action.help != argparse.SUPPRESS, (path, action.option_strings)


@pytest.mark.parametrize("argv", [[c, "--no-such-option"] for c in SUBCOMMANDS]
                         + [["plot", "forward", "--t", "a,b"], ["plot", "schedules", "--num-steps", "x"],
                            ["no-such-command"], ["plot"]],
                         ids=lambda a: " ".join(a))
def test_wrong_argument_is_one_line(argv, capsys):
    code, out, err = _run(argv, capsys)
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and "Traceback" not in err


def test_user_error_is_one_line_and_debug_shows_traceback(capsys, tmp_path):
    argv = ["plot", "forward", "--dataset", "no-such-dataset", "--out", str(tmp_path / "f.png")]
    code, out, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastddpm plot forward: error:"), err
    assert "no-such-dataset" in lines[0] and "butterfly" in lines[0]  # says what is allowed
    assert not (tmp_path / "f.png").exists()
    with pytest.raises(ValueError):
        main(argv + ["--debug"])


def test_missing_file_is_one_line(capsys, tmp_path):
    code, out, err = _run(["plot", "samples", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "s.png")],
                          capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "missing.npy" in err


def test_plot_schedules_writes_png(tmp_path, capsys):
    out = tmp_path / "s.png"
    code, stdout, err = _run(["plot", "schedules", "--num-steps", "100", "--out", str(out), "--quiet"],
                             capsys)
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert err == ""  # --quiet
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
