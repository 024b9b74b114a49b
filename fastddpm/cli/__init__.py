"""The ``fastddpm`` command: one module per subcommand in this package.

Each subcommand module defines ``add_parser(subparsers, parents) -> argparse.ArgumentParser``
(call ``subparsers.add_parser(name, parents=parents, help=...,
formatter_class=argparse.ArgumentDefaultsHelpFormatter)``) and ``run(args) -> int | None``.
Modules are discovered, so adding a subcommand touches no other file; they import heavy
packages (torch, matplotlib) inside ``run`` so that ``fastddpm --help`` stays fast.

Conventions every subcommand keeps:
- ``--help`` shows every option with its default, read from the library function the flag
  maps to (``library_default``; SamplingOptions, fastddpm.training), never restated here;
- errors are one line on stderr, ``fastddpm CMD: error: what is wrong; what to do``, exit 2;
  warnings likewise, ``fastddpm CMD: warning: …``;
  ``--debug`` (or FASTDDPM_DEBUG=1) shows the traceback instead;
- anything that takes more than a second shows a progress bar on stderr (``progress(args)``
  says whether), and ``--quiet`` silences bars and chatter, leaving results and errors.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from .. import __version__
from ..distributed.context import DEFAULT_TIMEOUT

ORDER = ("train", "distill", "sample", "eval", "export", "plot", "bench", "demo", "info")
# Exceptions that carry a message meant for the user. Anything else is a bug: traceback.
USER_ERRORS = (ValueError, TypeError, OSError, KeyError, ImportError, FloatingPointError,
               RuntimeError)


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays available through --help)."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _one_line(text) -> str:
    return " ".join(str(text).split())


def progress(args) -> bool:
    """Whether a subcommand should draw progress bars: not --quiet, and stderr is a terminal
    or FASTDDPM_PROGRESS=1 (so CI logs are not flooded with bar redraws)."""
    if getattr(args, "quiet", False):
        return False
    return sys.stderr.isatty() or os.environ.get("FASTDDPM_PROGRESS") == "1"


def say(args, *msg) -> None:
    """Chatter for the user (to stderr); silent with --quiet. Results go to stdout."""
    if not getattr(args, "quiet", False):
        print(*msg, file=sys.stderr, flush=True)


def library_default(function, name: str):
    """The default of parameter ``name`` of the library function a flag maps to: CLI defaults are
    read from the library, never restated (tests/test_defaults.py)."""
    import inspect

    default = inspect.signature(function).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{function.__qualname__}() has no default for {name!r}")
    return default


def check_device(device) -> None:
    """Refuse ``--device cuda[:i]`` up front when torch sees no such GPU (one line, no traceback)."""
    text = str(device)
    if not text.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise UserError(f"--device {text}: {why} (torch {torch.__version__}); use --device cpu, or install a "
                        "CUDA build of torch on a machine with a GPU")
    index = text.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 … cuda:{torch.cuda.device_count() - 1}")


def add_distributed_arguments(parser, *, sampling: bool = False) -> None:
    """The --distributed flags shared by ``fastddpm sample`` and ``fastddpm train``."""
    group = parser.add_argument_group("distributed (start with torchrun; see docs/distributed.md)")
    group.add_argument("--distributed", action="store_true",
                       help="run as one rank of a torchrun job (gloo on CPU, NCCL with --device cuda: "
                            "each rank uses cuda:LOCAL_RANK)")
    group.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="limit for the rendezvous and the cross-rank argument check")
    if sampling:
        group.add_argument("--keep-shards", action="store_true",
                           help="keep OUT.shards/ (one .npy per rank) after assembling OUT")


def _subcommands():
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastddpm",
        description="Fast, reproducible DDPM training and bulk sampling "
                    "(Numba on CPU, Triton on GPU, ONNX Runtime without torch).",
        epilog="Run 'fastddpm COMMAND --help' for the options of a command. "
               "Start with 'fastddpm demo'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastddpm {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    common.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    for name in _subcommands():
        try:
            module = importlib.import_module(f"{__name__}.{name}")
            p = module.add_parser(sub, parents=[common])
            p.set_defaults(_run=module.run)
        except ImportError as exc:
            # A subcommand whose dependencies are missing (e.g. `train` without torch) must not
            # take the others down: `fastddpm sample model.onnx` works where torch is absent.
            # prefix_chars="\0": every argument, options included, lands in `rest`.
            p = sub.add_parser(name, help=f"(unavailable: {_one_line(exc)})", add_help=False,
                               prefix_chars="\0")
            p.add_argument("rest", nargs="*")
            p.set_defaults(_run=_unavailable(name, exc), debug=False, quiet=False)
    _tag_progs(parser)
    return parser


def _unavailable(name: str, exc: ImportError):
    def run(args):
        raise UserError(f"'{name}' needs a package that is not installed ({_one_line(exc)}); "
                        "pip install 'fastddpm[all]' or the missing package")
    return run


def _tag_progs(parser):
    """Record each (sub)parser's prog in its defaults, so that an unknown option is reported by
    the command it was given to ('fastddpm plot forward: error: …'), not by 'fastddpm'."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.set_defaults(_prog=child.prog)
                _tag_progs(child)


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.exit(2, f"{args._prog}: error: unrecognized arguments: {' '.join(extra)} "
                       f"(see '{args._prog} --help')\n")
    debug = args.debug or os.environ.get("FASTDDPM_DEBUG") == "1"
    import warnings

    format_warning = warnings.formatwarning
    if not debug:  # warnings are one line too: "fastddpm CMD: warning: …" (no file:line, no source)
        warnings.formatwarning = lambda message, category, *_, **__: \
            f"{args._prog}: warning: {_one_line(message)}\n"
    try:
        code = args._run(args)
    except KeyboardInterrupt:
        print(f"{args._prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastddpm ... | head`
        return 0
    except (UserError, *USER_ERRORS) as exc:
        if debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{args._prog}: error: {_one_line(msg) or type(exc).__name__}",
              file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = format_warning  # main() may run inside a larger program (or a test)
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
