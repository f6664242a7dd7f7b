"""The ``ocsbal`` console script.

``ocsbal check POOL.INI...`` validates configuration files (and loads the
certificates they name), each alone and together as one daemon would serve
them, and prints each effective pool, every default filled in, as INI text.
``ocsbal ctl ...`` calls a running pool's admin API (:mod:`ocsbal._ctl`).
``ocsbal --version`` prints ``ocsbal X.Y.Z``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ocsbal import __version__, _ctl
from ocsbal._idle import too_short_for_ocs
from ocsbal._site import load_pools
from ocsbal._tls import tls_problems
from ocsbal.config import ConfigError, render


def _check(args: argparse.Namespace) -> int:
    try:
        pools = load_pools(args.config, tls_problems)
    except ConfigError as e:
        print(f"invalid configuration:\n{e}", file=sys.stderr)
        return 1
    for n, (path, pool) in enumerate(zip(args.config, pools, strict=True)):
        warning = too_short_for_ocs(pool.name, pool.idle_timeout)
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
        print(
            ("\n" if n else "")
            + f"; {path}: valid; the effective pool, defaults filled in:\n"
        )
        print(render(pool), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ocsbal`` command with ``argv``; return its exit status."""
    parser = argparse.ArgumentParser(
        prog="ocsbal", description="Tools for ocsbal pools."
    )
    parser.add_argument("--version", action="version", version=f"ocsbal {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate pools' INI files and print the effective pools",
        description="Validate pools' INI files, each and together (as one "
        "twistd ocsbal with a --config for each would serve them); print the "
        "effective pools or every problem found (exit status 1).",
    )
    check.add_argument("config", metavar="POOL.INI", nargs="+")
    check.set_defaults(run=_check)
    ctl = commands.add_parser(
        "ctl",
        help="watch and change a running pool through its admin interface",
        description="Call a running pool's admin API: list servers, add, "
        "drain, re-weight or remove them.",
    )
    _ctl.add_arguments(ctl)
    ctl.set_defaults(run=_ctl.main)
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
