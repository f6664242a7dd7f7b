"""Several pools in one daemon: their files read and checked together.

``twistd ocsbal --config fe.ini --config director.ini`` serves every pool,
each file unchanged in form.  :func:`load_pools` reads them all and adds
what must hold between them: each pool its own name, no VIP address and
port taken twice, and one admin interface (an ``[admin]`` section in one
file, or the same one in several), which serves every pool.  Every problem
of every file is reported at once.  Each pool keeps the operator's
changes (:mod:`ocsbal._overrides`) in a state file of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ocsbal._rules import ConfigError, Problem
from ocsbal.config import Pool, _FileCheck, load, state_beside

__all__ = ["load_pools", "state_file"]


def load_pools(
    paths: Sequence[str], check_files: _FileCheck | None = None
) -> list[Pool]:
    """Read every file of ``paths``, in order; their pools.

    :param check_files: as :func:`ocsbal.config.load`'s.
    :raises ConfigError: listing every problem of every file, and those
        between them.
    """
    pools: list[Pool] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            pools.append(load(path, check_files))
        except ConfigError as e:
            problems += e.problems
    if not problems:
        problems += _between(paths, pools)
    if problems:
        raise ConfigError(problems)
    # The same [admin] in several files is one interface: the first's.
    first = next((i for i, pool in enumerate(pools) if pool.admin), len(pools))
    return [
        pool if i <= first else attrs.evolve(pool, admin=None)
        for i, pool in enumerate(pools)
    ]


def state_file(path: str, pool: Pool) -> str:
    """Where ``pool``, read from ``path``, keeps the operator's changes.

    ``[admin] state_file`` in the file that has the interface; beside its
    file for every other pool.
    """
    if pool.admin is not None and pool.admin.state_file is not None:
        return pool.admin.state_file
    return state_beside(path)


def _between(paths: Sequence[str], pools: Sequence[Pool]) -> list[Problem]:
    problems: list[Problem] = []
    names: dict[str, str] = {}
    taken: dict[tuple[str, int], str] = {}
    admin: tuple[str, object] | None = None
    for path, pool in zip(paths, pools, strict=True):
        if pool.name in names:
            problems.append(
                Problem(
                    path,
                    "pool",
                    "name",
                    pool.name,
                    f"is already {names[pool.name]}'s pool's name; each pool needs "
                    "its own",
                )
            )
        names.setdefault(pool.name, path)
        for port in pool.ports:
            where = (pool.vip, port.number)
            if where in taken:
                problems.append(
                    Problem(
                        path,
                        "ports",
                        str(port.number),
                        port.protocol.value,
                        f"{taken[where]}'s pool already listens on "
                        f"{pool.vip}:{port.number}",
                    )
                )
            taken.setdefault(where, path)
        if pool.admin is not None:
            interface = attrs.evolve(pool.admin, state_file=None)
            if admin is None:
                admin = (path, interface)
            elif admin[1] != interface:
                problems.append(
                    Problem(
                        path,
                        "admin",
                        None,
                        None,
                        f"{admin[0]} has another [admin] section; one interface "
                        "serves every pool: keep it in one file",
                    )
                )
    return problems
