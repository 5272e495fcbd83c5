"""The `rayconf` command line."""

from __future__ import annotations

import argparse
import sys

import rayconf


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayconf",
        description="rayconf: a strongly consistent, versioned configuration store on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"rayconf {rayconf.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
