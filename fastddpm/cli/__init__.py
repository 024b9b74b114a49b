"""The ``fastddpm`` command: one module per subcommand in this package.

Each subcommand module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int | None``. Modules are discovered, so adding a subcommand touches no other file.
User errors (ValueError, TypeError, FileNotFoundError, UserError, …) print one line and exit 2;
``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

ORDER = ("train", "sample", "eval", "export", "plot", "bench", "demo")
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError,
               KeyError, FloatingPointError, RuntimeError)


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _subcommands():
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastddpm", description="Fast, reproducible DDPM training and bulk sampling.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"fastddpm {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    common.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _subcommands():
        try:
            module = importlib.import_module(f"{__name__}.{name}")
            p = module.add_parser(sub, parents=[common])
        except ImportError as exc:
            # A subcommand whose dependencies are missing (e.g. `train` without torch) must not
            # take the others down: `fastddpm sample model.onnx` works where torch is absent.
            # prefix_chars="\0": every argument, options included, lands in `rest`.
            p = sub.add_parser(name, help=f"(unavailable: {exc})", add_help=False, prefix_chars="\0")
            p.add_argument("rest", nargs="*")
            p.set_defaults(_run=_unavailable(name, exc), debug=False, quiet=False)
            continue
        p.set_defaults(_run=module.run)
    return parser


def _unavailable(name: str, exc: ImportError):
    def run(args):
        raise UserError(f"this command needs a package that is not installed ({exc}); "
                        "pip install 'fastddpm[all]' or the missing package")
    return run


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args._run(args)
    except KeyboardInterrupt:
        print("fastddpm: interrupted", file=sys.stderr)
        return 130
    except (UserError, *USER_ERRORS) as exc:
        if args.debug:
            raise
        print(f"fastddpm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
