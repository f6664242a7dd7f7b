"""The operator's changes to the configured pool, kept across reloads and restarts.

A server drained, put in maintenance, re-weighted, added or removed through
the admin API is an *override* of the pool's file.  :class:`Overrides` holds
them by server name, and lays them over the pool each time the file is
loaded (at start and on every reload), so that a SIGHUP or a restart undoes
none of them.  The rule, when the file and the operator disagree: the
operator's change wins until it is forgotten (``ocsbal ctl forget``); a
reload that changes a value the operator overrode says so, once, in the
log, and an override the file comes to agree with is dropped.

It is plain data, saved as JSON (:meth:`Overrides.to_json`); it knows
nothing of files or sockets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from ocsbal._model import Pool, Server

__all__ = ["KEYS", "Overrides"]

#: What an override may change of a server, besides adding or removing it.
KEYS = ("state", "weight")

#: The state every server of a file starts in.
_FILE_STATE = "ready"


def _file_value(server: Server, key: str) -> object:
    return _FILE_STATE if key == "state" else server.weight


def _base(in_file: Server | None, entry: dict[str, Any], key: str) -> object:
    """What server's ``key`` is without the operator's change of it."""
    if in_file is not None:
        return _file_value(in_file, key)
    added = entry.get("added", {})
    return _FILE_STATE if key == "state" else added.get("weight")


@attrs.define
class Overrides:
    """The operator's changes, by server name.

    Each entry may hold ``state`` (``drain`` or ``maint``), ``weight``,
    ``added`` (``{"address", "weight"}``: a server the file lacks) or
    ``removed`` (``True``: a server of the file taken out).
    """

    servers: dict[str, dict[str, Any]] = attrs.Factory(dict)

    def change(self, configured: Pool, name: str, **values: Any) -> None:
        """Remember that the operator set ``values`` on server ``name``.

        ``removed=True`` drops its other overrides, and undoes an addition;
        a value the server has without overrides is no override.
        """
        in_file = {s.name: s for s in configured.servers}.get(name)
        entry = self.servers.setdefault(name, {})
        if values.get("removed"):
            entry.clear()
            if in_file is not None:
                entry["removed"] = True
        else:
            entry.pop("removed", None)
            entry.update(values)
            for key in KEYS:
                if key in entry and entry[key] == _base(in_file, entry, key):
                    del entry[key]
        if not entry:
            del self.servers[name]

    def forget(self, name: str | None = None) -> list[str]:
        """Drop the overrides of server ``name``, or all; the names dropped."""
        names = list(self.servers) if name is None else [name] * (name in self.servers)
        for dropped in names:
            del self.servers[dropped]
        return names

    def apply(self, configured: Pool) -> tuple[Pool, dict[str, str]]:
        """The pool to run: ``configured`` with the operator's changes.

        :return: that pool, and the admin state (``drain``, ``maint``) of
            each server the operator put in one.
        """
        servers: list[Server] = []
        for server in configured.servers:
            entry = self.servers.get(server.name, {})
            if entry.get("removed"):
                continue
            weight = entry.get("weight", server.weight)
            servers.append(attrs.evolve(server, weight=weight))
        named = {s.name for s in servers}
        for name, entry in self.servers.items():
            added = entry.get("added")
            if added is not None and name not in named:
                weight = entry.get("weight", added["weight"])
                servers.append(Server(name, added["address"], weight=weight))
        states = {n: e["state"] for n, e in self.servers.items() if "state" in e}
        return attrs.evolve(configured, servers=servers), states

    def reconcile(self, old: Pool, new: Pool) -> Iterator[str]:
        """Take a reloaded file: drop the overrides it now agrees with.

        Yields a sentence for each value it changed that the operator
        overrode, for the log.
        """
        before = {s.name: s for s in old.servers}
        after = {s.name: s for s in new.servers}
        for name, entry in list(self.servers.items()):
            now, was = after.get(name), before.get(name)
            if entry.get("removed") and now is None:
                del self.servers[name]
                continue
            if "added" in entry and now is not None:
                yield (
                    f"server {name}: the file now has it at {now.address}; the "
                    f"one the operator added at {entry['added']['address']} stays"
                )
            for key in KEYS:
                if key not in entry or now is None:
                    continue
                if _file_value(now, key) == entry[key]:
                    del entry[key]
                elif was is not None and _file_value(was, key) != _file_value(now, key):
                    yield (
                        f"server {name}: the file's {key} changed to "
                        f"{_file_value(now, key)}; the operator's {entry[key]} stays "
                        f"(ocsbal ctl forget {name} takes the file's)"
                    )
            if not entry:
                del self.servers[name]

    def differences(self, configured: Pool, name: str) -> dict[str, Any]:
        """What the running server ``name`` has that the file does not.

        Each key overridden maps to ``{"running": value, "file": value}``;
        ``added`` is ``True`` for a server the file lacks, ``removed`` for
        one of the file's the operator took out.
        """
        entry = self.servers.get(name)
        if not entry:
            return {}
        if entry.get("removed"):
            return {"removed": True}
        in_file = {s.name: s for s in configured.servers}.get(name)
        found: dict[str, Any] = {}
        if "added" in entry and in_file is None:
            found["added"] = True
        for key in KEYS:
            if key in entry:
                was = None if in_file is None else _file_value(in_file, key)
                found[key] = {"running": entry[key], "file": was}
        return found

    def copy(self) -> Overrides:
        """A copy to change while the original stays as it is."""
        return Overrides({name: dict(entry) for name, entry in self.servers.items()})

    def to_json(self) -> dict[str, Any]:
        """The overrides as JSON-ready data, for the state file."""
        return {"version": 1, "servers": self.servers}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Overrides:
        """Read what :meth:`to_json` wrote.

        :raises ValueError: if it is not that.
        """
        servers = data.get("servers") if isinstance(data, Mapping) else None
        if data.get("version") != 1 or not isinstance(servers, dict):
            raise ValueError("not an ocsbal state file (version 1)")
        for name, entry in servers.items():
            if not isinstance(entry, dict) or not set(entry) <= {
                *KEYS,
                "added",
                "removed",
            }:
                raise ValueError(f"server {name!r}: not an override")
        return cls({name: dict(entry) for name, entry in servers.items()})
