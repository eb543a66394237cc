"""The ``ufp4`` command: ``ufp4 analyze``, ``ufp4 train``, ``ufp4 kernels``.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``; modules
are imported only when their subcommand runs, so ``ufp4 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "analyze": ("ufp4_compile.cli.analyze", "shrinkage-bias lab: alpha, SQNR, bucket ratio per format"),
    "train": ("ufp4_compile.cli.train", "train a small GPT under several recipes; BF16-relative loss gap"),
    "kernels": ("ufp4_compile.cli.kernels", "compile every kernel for sm_90 / sm_100 / gfx950; report MMA"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ufp4", description="4-bit training with torch.compile")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name == wanted:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
