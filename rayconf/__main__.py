"""The `rayconf` command line."""

from __future__ import annotations

import argparse
import sys

import rayconf
from rayconf.clients.cli import COMMANDS, add_cluster_parsers, run_cluster_command
from rayconf.sims.cli import add_sim_parser, run_sim_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayconf",
        description="rayconf: a strongly consistent, versioned configuration store on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"rayconf {rayconf.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_cluster_parsers(subparsers)
    add_sim_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 2
    if arguments.command == "sim":
        return run_sim_command(arguments)
    if arguments.command in COMMANDS:
        return run_cluster_command(arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
