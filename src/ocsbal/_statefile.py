"""The state file: the operator's changes (:mod:`ocsbal._overrides`) on disk.

Written whole at each change, through a temporary file renamed over the old
one, so that a crash leaves the old or the new, never half of one.  A file
that cannot be read or written is said in the log, and the changes are kept
in memory: the balancer goes on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.logger import Logger

from ocsbal._overrides import Overrides

__all__ = ["read_state", "write_state"]

log = Logger(namespace="ocsbal")


def read_state(path: str | None) -> Overrides:
    """The overrides kept in ``path``; none if there is no such file (or path)."""
    if path is None or not os.path.exists(path):
        return Overrides()
    try:
        overrides = Overrides.from_json(json.loads(Path(path).read_text("utf-8")))
    except (OSError, ValueError) as e:
        log.warn(
            "state file {path} ignored, the operator's earlier changes with it: {why}",
            path=path,
            why=getattr(e, "strerror", None) or e,
        )
        return Overrides()
    if overrides.servers:
        log.info(
            "state file {path}: the operator's changes to {names} apply",
            path=path,
            names=", ".join(overrides.servers),
        )
    return overrides


def write_state(path: str | None, overrides: Overrides) -> None:
    """Keep ``overrides`` in ``path``, replacing what it held."""
    if path is None:
        return
    temporary = f"{path}.new"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(overrides.to_json(), file, indent=1, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as e:
        log.warn(
            "state file {path} not written ({why}): the change holds until a "
            "restart only",
            path=path,
            why=e.strerror,
        )
