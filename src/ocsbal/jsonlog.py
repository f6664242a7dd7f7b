"""Log observers for ``twistd --logger``: each event as one line of JSON.

``twistd --logger=ocsbal.jsonlog.stdout -n ocsbal --config pool.ini`` writes
every event, its fields included (those of ``[log] connections``, see
:mod:`ocsbal._connlog`, among them), as one JSON object a line on standard
output, where systemd's journal keeps it.  A file of one's own takes three
lines of Python: a module whose factory returns
``twisted.logger.jsonFileLogObserver(open(PATH, "a"), recordSeparator="")``.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["stdout"]


def stdout() -> ILogObserver:
    """An observer writing each event to standard output as a line of JSON."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
