"""A pool's INI file: read into the model of :mod:`ocsbal._model`, and written back.

:func:`load` and :func:`parse` read an INI file into a :class:`Pool`, and
:func:`render` writes a pool back as the INI text that parses to it.  A bad
file yields one :class:`ConfigError` listing every problem, each naming the
file, section, key and value and saying what is allowed.

The model's classes are re-exported here: ``ocsbal.config`` is where
embedders find both.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs

from ocsbal._model import (
    _MONITOR_RULES,
    _POOL_RULES,
    _PROTOCOL_RULE,
    _SERVER_RULES,
    HEARTBEAT_PORTS,
    OCS_PORTS,
    Monitor,
    Pool,
    Port,
    Server,
    relations,
)
from ocsbal._rules import (
    _NAME_RULE,
    _PORT_RULE,
    ConfigError,
    MonitorType,
    NatMode,
    PoolKind,
    PortProtocol,
    Problem,
    TLSMode,
    _Rule,
    _text,
)
from ocsbal._sections import (
    _ADMIN_RULES,
    _LIMITS_RULES,
    _LOG_RULES,
    _TLS_FILES,
    _TLS_RULES,
    Admin,
    Limits,
    LogSettings,
    TLSSettings,
)

__all__ = [
    "HEARTBEAT_PORTS",
    "OCS_PORTS",
    "Admin",
    "ConfigError",
    "Limits",
    "LogSettings",
    "Monitor",
    "MonitorType",
    "NatMode",
    "Pool",
    "PoolKind",
    "Port",
    "PortProtocol",
    "Problem",
    "Server",
    "TLSMode",
    "TLSSettings",
    "load",
    "parse",
    "render",
]

_T = TypeVar("_T")

#: What reads the ``[tls]`` files of a pool that terminates TLS, given its
#: settings and its FQDN (``None`` if refused): ``(key, file, why)`` for
#: each that cannot be used.  :func:`ocsbal._tls.tls_problems` is the one;
#: it is passed in, as the model imports nothing of Twisted or OpenSSL.
_FileCheck = Callable[[TLSSettings, str | None], Iterable[tuple[str, str, str]]]


@attrs.frozen
class _MonitorDraft:
    """A ``[monitor]`` some of whose values were refused, for :func:`relations`.

    A refused value is ``None``; one not given is the default.
    """

    type: MonitorType | None = attrs.fields(Monitor).type.default
    url: str | None = attrs.fields(Monitor).url.default
    interval: float | None = attrs.fields(Monitor).interval.default
    timeout: float | None = attrs.fields(Monitor).timeout.default


@attrs.define
class _Draft:
    """A pool being read from a file: the values read so far and the problems found."""

    #: The file's name, in problems.
    file: str
    #: The ``[pool]`` values read, ``None`` where refused.
    fields: dict[str, Any] = attrs.Factory(dict)
    ports: list[Port] = attrs.Factory(list)
    servers: list[Server] = attrs.Factory(list)
    #: Where relative file names are taken from.
    directory: Path = Path()
    #: A :class:`_MonitorDraft` where a ``[monitor]`` value was refused.
    monitor: Monitor | _MonitorDraft = attrs.Factory(Monitor)
    #: ``None`` where the ``[tls]`` mode was refused.
    tls: TLSSettings | None = attrs.Factory(TLSSettings)
    admin: Admin | None = None
    limits: Limits | None = attrs.Factory(Limits)
    log: LogSettings | None = attrs.Factory(LogSettings)
    problems: list[Problem] = attrs.Factory(list)

    @property
    def kind(self) -> PoolKind | None:
        return self.fields.get("kind", attrs.fields(Pool).kind.default)

    @property
    def nat(self) -> NatMode | None:
        return self.fields.get("nat", attrs.fields(Pool).nat.default)

    @property
    def vip(self) -> str | None:
        return self.fields.get("vip")

    @property
    def source(self) -> tuple[str, ...] | None:
        return self.fields.get("source")

    def problem(
        self,
        section: str | None,
        key: str | None,
        value: str | None,
        message: str,
    ) -> None:
        self.problems.append(Problem(self.file, section, key, value, message))

    def read(self, section: str, key: str, text: str, rule: _Rule[_T]) -> _T | None:
        try:
            return rule.read(text)
        except ValueError as e:
            self.problem(section, key, text, str(e))
            return None

    def known_items(
        self, section: configparser.SectionProxy, known: Iterable[str]
    ) -> Iterator[tuple[str, str]]:
        """Yield the section's keys that are in ``known``; report the others."""
        known = list(known)
        for key, text in section.items():
            if key in known:
                yield key, text
            else:
                allowed = ", ".join(known)
                self.problem(
                    section.name,
                    key,
                    text,
                    f"unknown key; allowed: {allowed}",
                )

    def require(self, section: configparser.SectionProxy, *keys: str) -> None:
        for key in keys:
            if key not in section:
                self.problem(section.name, key, "", "is required")


def _read_pool(draft: _Draft, section: configparser.SectionProxy) -> None:
    draft.require(section, "name", "fqdn", "vip")
    for key, text in draft.known_items(section, _POOL_RULES):
        draft.fields[key] = draft.read(section.name, key, text, _POOL_RULES[key])


def _read_ports(draft: _Draft, section: configparser.SectionProxy) -> None:
    if not section:
        draft.problem(section.name, None, None, "the VIP needs at least one port")
    for key, text in section.items():
        try:
            number: int | None = _PORT_RULE.read(key)
        except ValueError as e:
            draft.problem(section.name, key, text, f"the port {e}")
            number = None
        protocol = draft.read(section.name, key, text, _PROTOCOL_RULE)
        if number is not None and protocol is not None:
            draft.ports.append(Port(number, protocol))


def _read_server(draft: _Draft, section: configparser.SectionProxy) -> None:
    before = len(draft.problems)
    name = section.name.partition(":")[2]
    problem = _NAME_RULE.explain(name)
    if problem is not None:
        draft.problem(section.name, None, None, f"the server's name {problem}")
    draft.require(section, "address")
    values: dict[str, Any] = {
        key: draft.read(section.name, key, text, _SERVER_RULES[key])
        for key, text in draft.known_items(section, _SERVER_RULES)
    }
    if len(draft.problems) == before:
        draft.servers.append(Server(name, **values))
    elif problem is None and values.get("address") is not None:
        # For the relations alone (with a problem, no pool is built from the
        # draft): they read a server's name and address, which were read.
        draft.servers.append(Server(name, values["address"]))


def _read_monitor(draft: _Draft, section: configparser.SectionProxy) -> None:
    values: dict[str, Any] = {
        key: draft.read(section.name, key, text, _MONITOR_RULES[key])
        for key, text in draft.known_items(section, _MONITOR_RULES)
    }
    if None not in values.values():
        draft.monitor = Monitor(**values)
    else:
        related = attrs.fields_dict(_MonitorDraft)
        draft.monitor = _MonitorDraft(
            **{key: value for key, value in values.items() if key in related}
        )


def _read_tls(draft: _Draft, section: configparser.SectionProxy) -> None:
    values: dict[str, Any] = {
        key: draft.read(section.name, key, text, _TLS_RULES[key])
        for key, text in draft.known_items(section, _TLS_RULES)
    }
    for key in _TLS_FILES:
        if values.get(key):
            values[key] = os.path.join(draft.directory, values[key])
    if "mode" in values and values["mode"] is None:
        draft.tls = None  # nothing else of the section can be judged
    else:
        # A refused value takes its default, for the relations and the file
        # checks alone (with a problem, no pool is built from the draft).
        # No default misleads them: a file not named is not read, and no
        # relation refuses inspect = yes or any handshake_timeout.
        given = {key: value for key, value in values.items() if value is not None}
        draft.tls = TLSSettings(**given)


def _read_admin(draft: _Draft, section: configparser.SectionProxy) -> None:
    before = len(draft.problems)
    values: dict[str, Any] = {
        key: draft.read(section.name, key, text, _ADMIN_RULES[key])
        for key, text in draft.known_items(section, _ADMIN_RULES)
    }
    if values.get("state_file"):
        values["state_file"] = os.path.join(draft.directory, values["state_file"])
    if len(draft.problems) == before:
        draft.admin = Admin(**values)


def _read_limits(draft: _Draft, section: configparser.SectionProxy) -> None:
    values: dict[str, Any] = {
        key: draft.read(section.name, key, text, _LIMITS_RULES[key])
        for key, text in draft.known_items(section, _LIMITS_RULES)
    }
    draft.limits = None if None in values.values() else Limits(**values)


def _read_log(draft: _Draft, section: configparser.SectionProxy) -> None:
    values: dict[str, Any] = {
        key: draft.read(section.name, key, text, _LOG_RULES[key])
        for key, text in draft.known_items(section, _LOG_RULES)
    }
    draft.log = None if None in values.values() else LogSettings(**values)


#: How each section is read: ``(pattern, reader)``, first match wins.  A new
#: section (``[monitor]``, ``[tls]``, ``[admin]``) is a new entry here and a
#: new :class:`Pool` field; the others do not change.
_SECTIONS: list[
    tuple[re.Pattern[str], Callable[[_Draft, configparser.SectionProxy], None]]
] = [
    (re.compile(r"pool\Z"), _read_pool),
    (re.compile(r"ports\Z"), _read_ports),
    (re.compile(r"server:"), _read_server),
    (re.compile(r"monitor\Z"), _read_monitor),
    (re.compile(r"tls\Z"), _read_tls),
    (re.compile(r"admin\Z"), _read_admin),
    (re.compile(r"limits\Z"), _read_limits),
    (re.compile(r"log\Z"), _read_log),
]
_SECTION_NAMES = (
    "[pool], [ports], [server:NAME], [monitor], [tls], [admin], [limits], [log]"
)


def parse(
    text: str,
    source: str = "<string>",
    directory: str | Path | None = None,
    check_files: _FileCheck | None = None,
) -> Pool:
    """Read a pool from INI text; ``source`` names it in problems.

    :param directory: where file names that are not absolute are taken
        from; by default the working directory.
    :param check_files: reads the ``[tls]`` files, if the pool terminates
        TLS, so that what is wrong with them is listed with the rest;
        without it no file is read (they are when the pool starts).
    :raises ConfigError: listing every problem found.
    """
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"),
        interpolation=None,
        empty_lines_in_values=False,
        default_section="\0",
    )
    draft = _Draft(source, directory=Path(directory or ".").absolute())
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        # The parser stops at the first syntax error: nothing else is known.
        draft.problem(None, None, None, _syntax(e))
        raise ConfigError(draft.problems) from None
    if not parser.has_section("pool"):
        draft.problem("pool", None, None, "the [pool] section is required")
    if not parser.has_section("ports"):
        draft.ports = list(OCS_PORTS)
    if not any(name.startswith("server:") for name in parser.sections()):
        draft.problem("pool", None, None, "a pool needs at least one [server:NAME]")
    for name in parser.sections():
        reader = next((read for p, read in _SECTIONS if p.match(name)), None)
        if reader is None:
            allowed = f"unknown section; allowed: {_SECTION_NAMES}"
            draft.problem(name, None, None, allowed)
        else:
            reader(draft, parser[name])
    tls = draft.tls
    if check_files is not None and tls is not None and tls.terminate:
        for unusable in check_files(tls, draft.fields.get("fqdn")):
            draft.problem("tls", *unusable)
    if draft.problems:  # and what the values read break of each other
        for section, key, value, message in relations(draft):
            draft.problem(section, key, value, message)
        raise ConfigError(draft.problems)
    try:
        return Pool(
            servers=draft.servers,
            ports=draft.ports,
            monitor=cast(Monitor, draft.monitor),  # no value was refused
            tls=cast(TLSSettings, draft.tls),
            admin=draft.admin,
            limits=cast(Limits, draft.limits),
            log=cast(LogSettings, draft.log),
            **draft.fields,
        )
    except ConfigError as e:  # the pool checks its relations: name the file
        named = [attrs.evolve(problem, file=source) for problem in e.problems]
        raise ConfigError(named) from None


def _syntax(error: configparser.Error) -> str:
    if isinstance(error, configparser.DuplicateSectionError):
        return f"line {error.lineno}: section [{error.section}] appears twice"
    if isinstance(error, configparser.DuplicateOptionError):
        return f"line {error.lineno}: [{error.section}] {error.option} appears twice"
    if isinstance(error, configparser.MissingSectionHeaderError):
        return f"line {error.lineno}: a key before any [section]"
    if isinstance(error, configparser.ParsingError):
        lines = ", ".join(str(line) for line, _ in error.errors)
        return f"line {lines}: not a 'key = value' line, [section] or comment"
    return str(error)


def load(path: str | Path, check_files: _FileCheck | None = None) -> Pool:
    """Read a pool from an INI file.

    With an ``[admin]`` section, the state file is beside the pool's file
    unless it says where: ``pool.ini``'s is ``pool.state``.

    :param check_files: reads the ``[tls]`` files too (see :func:`parse`).
    :raises ConfigError: listing every problem found, or that the file
        cannot be read.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(
            [Problem(source, None, None, None, f"cannot read: {reason}")]
        ) from None
    pool = parse(text, source, Path(path).parent, check_files)
    if pool.admin is not None and pool.admin.state_file is None:
        admin = attrs.evolve(pool.admin, state_file=state_beside(path))
        pool = attrs.evolve(pool, admin=admin)
    return pool


def state_beside(path: str | Path) -> str:
    """The state file beside a pool's file: ``pool.ini``'s is ``pool.state``."""
    return str(Path(path).absolute().with_suffix(".state"))


def _server_lines(server: Server) -> Iterator[str]:
    yield f"address = {server.address}"
    yield f"weight = {server.weight}"
    if server.tls_name is not None:
        yield f"tls_name = {server.tls_name}"
    if server.slowstart is not None:
        yield f"slowstart = {_text(server.slowstart)}"
    if server.maxconn:
        yield f"maxconn = {server.maxconn}"


def render(pool: Pool) -> str:
    """Write ``pool`` as INI text; :func:`parse` of the result equals ``pool``."""
    fields = attrs.asdict(pool, recurse=False)
    lines = ["[pool]"]
    for key in _POOL_RULES:
        if fields[key] not in (None, ()):
            lines.append(f"{key} = {_text(fields[key])}")
    lines += ["", "[ports]"]
    lines += [f"{port.number} = {port.protocol.value}" for port in pool.ports]
    for server in pool.servers:
        lines += ["", f"[server:{server.name}]", *_server_lines(server)]
    lines += ["", "[monitor]"]
    monitor = attrs.asdict(pool.monitor, recurse=False)
    for key in _MONITOR_RULES:
        line = f"{key} = {_text(monitor[key])}"
        if key == "ports" and not pool.monitor.ports:
            line += f"; by default: {_text(pool.heartbeat_ports)}"
        lines.append(line)
    if pool.tls != TLSSettings():
        lines += ["", "[tls]"]
        tls = attrs.asdict(pool.tls, recurse=False)
        lines += [
            f"{key} = {_text(tls[key])}" for key in _TLS_RULES if tls[key] is not None
        ]
    if pool.limits != Limits():
        lines += ["", "[limits]"]
        limits = attrs.asdict(pool.limits, recurse=False)
        lines += [f"{key} = {limits[key]}" for key in _LIMITS_RULES]
    if pool.log != LogSettings():
        lines += ["", "[log]", f"connections = {_text(pool.log.connections)}"]
    if pool.admin is not None:
        lines += ["", "[admin]", f"listen = {pool.admin.listen}"]
        if pool.admin.token_file is not None:
            lines.append(f"token_file = {pool.admin.token_file}")
        if pool.admin.hosts:
            lines.append(f"hosts = {_text(pool.admin.hosts)}")
        if pool.admin.state_file is not None:
            lines.append(f"state_file = {pool.admin.state_file}")
    return "\n".join(lines) + "\n"
