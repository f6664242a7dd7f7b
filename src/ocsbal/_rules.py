"""What a configuration value may be, and how what is wrong is told.

The kinds of values (the enums), and the rules values keep.  A
:class:`_Rule` both reads a field's INI text and checks its value, and it is
the field's attrs validator, so a class built in code is held to exactly the
rule an INI file is.  The checks say, when a value is not allowed, what is;
:mod:`ocsbal._model` puts them on its fields.  A :class:`Problem` is one
thing wrong, placed where an operator would fix it, and a
:class:`ConfigError` all of them at once.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Generic, TypeVar, cast

import attrs

from ocsbal.scheduling import scheduler_class

_T = TypeVar("_T")


class PortProtocol(enum.Enum):
    """What a VIP port carries, which decides how much ocsbal looks at it."""

    #: Any TCP stream, relayed blind.
    TCP = "tcp"
    #: SIP over TCP (OCS: 5060).
    SIP = "sip"
    #: SIP over TLS (OCS: 5061): relayed encrypted, or decrypted and
    #: followed as ``sip`` is, as the ``[tls]`` mode says.
    SIPS = "sips"


class PoolKind(enum.Enum):
    """The OCS 2007 R2 role of the pool behind the VIP."""

    ENTERPRISE = "enterprise"
    DIRECTOR = "director"
    WEB_ACCESS = "web-access"
    EDGE = "edge"

    @property
    def internal(self) -> bool:
        """Whether the pool's servers connect to their own VIP (all but Edge)."""
        return self is not PoolKind.EDGE


class NatMode(enum.Enum):
    """How connections to the servers are addressed."""

    #: Proxy (source NAT): servers see connections from the load balancer.
    FULL = "full"
    #: Transparent (destination NAT only): servers see the client's address.
    HALF = "half"


class MonitorType(enum.Enum):
    """How a server's health is checked."""

    #: A TCP connection established and closed: OCS 2007 R2's heartbeat.
    TCP = "tcp"
    #: A TLS handshake completed.
    TLS = "tls"
    #: A SIP OPTIONS answered with a final response (not 503).
    SIP_OPTIONS = "sip-options"
    #: An HTTPS GET of the monitor's ``url`` answered 2xx or 3xx.
    HTTPS = "https"


class TLSMode(enum.Enum):
    """What ocsbal does with the TLS on ``sips`` ports."""

    #: The encrypted bytes are relayed untouched; nothing is inspected.
    PASSTHROUGH = "passthrough"
    #: Clients handshake with ocsbal, which opens TLS of its own to the
    #: server, verifies the server's certificate, and follows the SIP.
    TERMINATE = "terminate"


@attrs.frozen
class Problem:
    """One thing wrong with a configuration.

    Its string form is the line an operator reads, for example
    ``pool.ini: [pool] retries = -1: must be a whole number, 0 or more``;
    a pool built in code has no file, and its lines start at the section.
    """

    file: str | None
    section: str | None
    key: str | None
    value: str | None
    message: str

    def __str__(self) -> str:
        where = [] if self.file is None else [self.file]
        if self.section is not None:
            place = f"[{self.section}]"
            if self.key is not None:
                place += f" {self.key} = {self.value}"
            where.append(place)
        return ": ".join([*where, self.message])


class ConfigError(ValueError):
    """A configuration was refused; :attr:`problems` says why, all at once."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(map(_text, value))
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _NotAllowedError(ValueError):
    """A value is not allowed; the message says what is."""


class _Rule(Generic[_T]):
    """One field's rule: how to read it from INI text and what it may hold.

    An instance is the attrs validator of its field, so a class built in code
    is held to exactly the rule an INI file is.
    """

    def __init__(self, read: Callable[[str], _T], check: Callable[[_T], None]) -> None:
        self._read = read
        self._check = check

    def explain(self, value: _T) -> str | None:
        """Say what is allowed if ``value`` is not, else return ``None``."""
        try:
            self._check(value)
        except ValueError as e:
            return str(e)
        return None

    def read(self, text: str) -> _T:
        """Read and check an INI value, or say what is allowed (:class:`ValueError`)."""
        value = self._read(text.strip())
        problem = self.explain(value)
        if problem is not None:
            raise _NotAllowedError(problem)
        return value

    def __call__(
        self, _instance: object, attribute: attrs.Attribute[_T], value: _T
    ) -> None:
        problem = self.explain(value)
        if problem is not None:
            raise ValueError(f"{attribute.name} = {value!r}: {problem}")


def _choices(kind: type[enum.Enum]) -> str:
    return ", ".join(member.value for member in kind)


def _enum_rule(kind: type[Any], special: dict[str, str] | None = None) -> _Rule[Any]:
    allowed = f"must be one of {_choices(kind)}"

    def read(text: str) -> Any:
        if special and text.lower() in special:
            raise _NotAllowedError(special[text.lower()])
        try:
            return kind(text.lower())
        except ValueError:
            raise _NotAllowedError(allowed) from None

    def check(value: object) -> None:
        if not isinstance(value, kind):
            raise _NotAllowedError(allowed)

    return _Rule(read, check)


_N = TypeVar("_N", int, float)


def _number_rule(kind: type[_N], allowed: str, ok: Callable[[_N], bool]) -> _Rule[_N]:
    """A rule for an ``int`` or ``float`` field; ``bool`` is never a number here."""

    def read(text: str) -> _N:
        try:
            return kind(text)
        except ValueError:
            raise _NotAllowedError(allowed) from None

    def check(value: _N) -> None:
        numeric = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or not ok(value):
            raise _NotAllowedError(allowed)

    return _Rule(read, check)


def _whole_rule(low: int, high: int | None = None) -> _Rule[int]:
    if high is None:
        return _number_rule(int, f"must be a whole number, {low} or more", low.__le__)
    return _number_rule(
        int, f"must be a whole number from {low} to {high}", lambda n: low <= n <= high
    )


def _seconds_rule() -> _Rule[float]:
    return _number_rule(
        float,
        "must be a number of seconds greater than 0",
        lambda s: math.isfinite(s) and s > 0,
    )


def _ramp_rule() -> _Rule[float]:
    return _number_rule(
        float,
        "must be a number of seconds, 0 (off) or more",
        lambda s: math.isfinite(s) and s >= 0,
    )


#: The most worker processes a pool may have: enough for 100,000 clients at
#: under 10,000 connections a process (20,000 descriptors), with room.
MAX_WORKERS = 64


def _read_workers(text: str) -> int | None:
    if text.lower() == "auto":
        return None
    return _WORKERS_COUNT.read(text)


def _check_workers(value: int | None) -> None:
    if value is not None:
        _WORKERS_COUNT._check(value)


_WORKERS_COUNT = _number_rule(
    int,
    f"must be auto or a whole number from 1 to {MAX_WORKERS}",
    lambda n: 1 <= n <= MAX_WORKERS,
)


_BOOLEANS = {
    "yes": True,
    "true": True,
    "on": True,
    "no": False,
    "false": False,
    "off": False,
}


def _read_boolean(text: str) -> bool:
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise _NotAllowedError("must be yes or no") from None


def _check_boolean(value: bool) -> None:
    if not isinstance(value, bool):
        raise _NotAllowedError("must be yes or no")


def _normal_address(value: Any) -> Any:
    """Write an IP address the one way Python does, leaving anything else alone."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _check_address(value: str) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise _NotAllowedError(
            "must be a static IPv4 or IPv6 address, not a host name"
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise _NotAllowedError("must be one host's unicast address")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def _check_name(value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _NotAllowedError(
            "must be 1 to 63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )


def _normal_fqdn(value: Any) -> Any:
    return value.lower().removesuffix(".") if isinstance(value, str) else value


def _check_fqdn(value: str) -> None:
    labels = value.split(".") if isinstance(value, str) else []
    if len(labels) < 2 or len(value) > 253 or not all(map(_LABEL.match, labels)):
        raise _NotAllowedError(
            "must be a fully qualified DNS name such as pool01.contoso.com "
            "(the pool's single DNS name, resolving to the VIP)"
        )


def _check_scheduler(value: str) -> None:
    if not isinstance(value, str):
        raise _NotAllowedError("must be a scheduler name or package.module:ClassName")
    scheduler_class(value)


#: Rules more than one field keeps.
_NAME_RULE = _Rule(str, _check_name)
_ADDRESS_RULE: _Rule[str] = _Rule(_normal_address, _check_address)
_PORT_RULE = _whole_rule(1, 65535)
_WEIGHT_RULE = _whole_rule(0, 65535)


#: The most source addresses a pool's server connections may come from.
MAX_SOURCES = 64


def _normal_sources(value: Any) -> Any:
    """Take one address or several, as a tuple of addresses written one way."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, (list, tuple)):
        return tuple(
            _normal_address(a.strip() if isinstance(a, str) else a) for a in value
        )
    return value


def _check_sources(value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or len(value) > MAX_SOURCES:
        raise _NotAllowedError(
            f"must be up to {MAX_SOURCES} IP addresses, separated by commas"
        )
    for address in value:
        try:
            _check_address(address)
        except _NotAllowedError as e:
            raise _NotAllowedError(f"lists {address}, which {e}") from None
    if len(set(value)) != len(value):
        raise _NotAllowedError("must not list an address twice")


def _normal_tls_name(value: Any) -> Any:
    return _normal_address(_normal_fqdn(value))


def _check_tls_name(value: str | None) -> None:
    if value is None:
        return
    with suppress(ValueError):
        ipaddress.ip_address(value)
        return
    labels = value.split(".") if isinstance(value, str) else []
    if not labels or len(value) > 253 or not all(map(_LABEL.match, labels)):
        raise _NotAllowedError(
            "must be the DNS name (such as fe01.contoso.com) or IP address "
            "the server's certificate is issued to"
        )


def _read_port_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in re.split(r"[\s,]+", text) if part)
    except ValueError:
        raise _NotAllowedError(_PORT_LIST) from None


def _check_port_list(ports: tuple[int, ...]) -> None:
    if len(set(ports)) != len(ports) or any(
        _PORT_RULE.explain(port) is not None for port in ports
    ):
        raise _NotAllowedError(_PORT_LIST)


_PORT_LIST = "must be distinct ports from 1 to 65535, separated by commas"


def _check_url(url: str) -> None:
    if not isinstance(url, str) or not re.fullmatch(r"/[\x21-\x7e]*", url):
        raise _NotAllowedError("must be a path starting with /, without spaces")


def _check_listen(text: str) -> None:
    allowed = (
        "must be a Twisted endpoint string: tcp:PORT[:interface=ADDRESS] "
        "(PORT at most 65535) or unix:PATH"
    )
    if not isinstance(text, str) or text.partition(":")[0] not in _ADMIN_ENDPOINTS:
        raise _NotAllowedError(allowed)
    kind, *parts = re.split(r"(?<!\\):", text)
    if kind != "unix":
        # Twisted's parser takes any number, and the bind fails only at start.
        named = [p.partition("=")[2] for p in parts if p.startswith("port=")]
        port = (named or [p for p in parts if "=" not in p] or [""])[0]
        if not port.isdigit() or int(port) > 65535:
            raise _NotAllowedError(allowed)
    # Twisted's own parser, imported here: the model needs it for this only.
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsing builds the endpoint object only; nothing is bound.
        serverFromString(cast(Any, None), text)
    except (ValueError, TypeError, KeyError):
        raise _NotAllowedError(allowed) from None


def _check_token_file(path: str | None) -> None:
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise _NotAllowedError("must be an absolute path to a file")


#: The endpoint types the admin interface may listen on.  TLS endpoints read
#: certificate files when parsed, and the interface is meant for loopback.
_ADMIN_ENDPOINTS = ("tcp", "tcp6", "unix")


def _read_names(text: str) -> tuple[str, ...]:
    return tuple(name.lower() for name in re.split(r"[\s,]+", text) if name)


def _check_names(names: tuple[str, ...]) -> None:
    allowed = "must be DNS names such as ocsbal.contoso.com, separated by commas"
    if not isinstance(names, tuple) or not all(
        isinstance(name, str)
        and len(name) <= 253
        and all(map(_LABEL.match, name.split(".")))
        for name in names
    ):
        raise _NotAllowedError(allowed)


def _check_file(path: str | None) -> None:
    if path is not None and (not isinstance(path, str) or not path):
        raise _NotAllowedError("must be a file name")


def _handshake_timeout(value: float) -> bool:
    return math.isfinite(value) and 0 < value <= 300
