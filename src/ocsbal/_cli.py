"""The ``ocsbal`` console script: tools that need no running balancer.

``ocsbal check POOL.INI`` validates a configuration file and prints the
effective pool, every default filled in, as INI text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ocsbal.config import ConfigError, load, render


def _check(args: argparse.Namespace) -> int:
    try:
        pool = load(args.config)
    except ConfigError as e:
        print(f"invalid configuration:\n{e}", file=sys.stderr)
        return 1
    print(f"; {args.config}: valid; the effective pool, defaults filled in:\n")
    print(render(pool), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ocsbal`` command with ``argv``; return its exit status."""
    parser = argparse.ArgumentParser(
        prog="ocsbal", description="Tools for ocsbal pool configurations."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a pool's INI file and print the effective pool",
        description="Validate a pool's INI file; print the effective pool or "
        "every problem found (exit status 1).",
    )
    check.add_argument("config", metavar="POOL.INI")
    check.set_defaults(run=_check)
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
