"""The model's ``[admin]``, ``[tls]``, ``[limits]`` and ``[log]`` sections.

Each holds its section's keys under the rules of :mod:`ocsbal._rules`, as
:mod:`ocsbal._model` does for the pool; :class:`~ocsbal._model.Pool` holds
one of each.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ocsbal._rules import (
    TLSMode,
    _check_boolean,
    _check_file,
    _check_listen,
    _check_names,
    _check_token_file,
    _enum_rule,
    _handshake_timeout,
    _number_rule,
    _read_boolean,
    _read_names,
    _Rule,
    _whole_rule,
)

__all__ = ["Admin", "Limits", "LogSettings", "TLSSettings"]


#: The rule of each ``[admin]`` key, which is also the rule of its attribute.
_ADMIN_RULES: dict[str, _Rule[Any]] = {
    "listen": _Rule(str, _check_listen),
    "token_file": _Rule(str, _check_token_file),
    "hosts": _Rule(_read_names, _check_names),
    "state_file": _Rule(str, _check_file),
}


def _names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(n.lower() if isinstance(n, str) else n for n in names)


@attrs.frozen
class Admin:
    """Where the admin interface (JSON API, metrics, status page) listens.

    :ivar listen: a Twisted endpoint string; loopback by default.
    :ivar token_file: a file holding the token requests must carry
        (``Authorization: Bearer TOKEN``); ``None`` for no token.  It is read
        at start and at every reload, never logged.
    :ivar hosts: the names, besides ``localhost`` and the address it listens
        on, that requests may give as their ``Host``: any other is refused,
        so that a web page cannot reach the interface through a name of its
        own that resolves to it (DNS rebinding).
    :ivar state_file: where the operator's changes through the interface
        are kept, so that a reload or a restart undoes none of them
        (:mod:`ocsbal._overrides`); ``None`` keeps them in memory only.
        :func:`ocsbal.config.load` puts it beside the pool's file.
    """

    listen: str = attrs.field(
        default="tcp:9900:interface=127.0.0.1", validator=_ADMIN_RULES["listen"]
    )
    token_file: str | None = attrs.field(
        default=None, validator=_ADMIN_RULES["token_file"]
    )
    hosts: tuple[str, ...] = attrs.field(
        default=(), converter=_names, validator=_ADMIN_RULES["hosts"]
    )
    state_file: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(_ADMIN_RULES["state_file"]),
    )


#: The rule of each ``[tls]`` key, which is also the rule of its attribute.
_TLS_RULES: dict[str, _Rule[Any]] = {
    "mode": _enum_rule(TLSMode),
    "certificate": _Rule(str, _check_file),
    "trust": _Rule(str, _check_file),
    "client_certificate": _Rule(str, _check_file),
    "handshake_timeout": _number_rule(
        float,
        "must be a number of seconds greater than 0 and at most 300",
        _handshake_timeout,
    ),
    "inspect": _Rule(_read_boolean, _check_boolean),
}

#: The ``[tls]`` keys that name files.
_TLS_FILES = ("certificate", "trust", "client_certificate")


@attrs.frozen
class TLSSettings:
    """TLS on the pool's ``sips`` ports (OCS: 5061).

    The files are read, and the certificate checked against the pool FQDN,
    when the pool starts (:mod:`ocsbal._tls`); the model holds their names.

    :ivar mode: pass the encrypted bytes through, or terminate TLS here.
    :ivar certificate: with ``terminate``, a PEM file holding the pool's
        private key and certificate (and its chain), issued to the pool FQDN.
    :ivar trust: a PEM file of the certificate authorities that sign the
        servers' certificates; ``None`` trusts the system's authorities.
    :ivar client_certificate: a PEM file of a private key and certificate
        presented to the servers (mutual TLS); ``None`` presents none.
    :ivar handshake_timeout: seconds a client has to complete its
        handshake before it is disconnected.
    :ivar inspect: with ``terminate``, whether the SIP decrypted is followed
        as on ``sip`` ports; without it the bytes are relayed, re-encrypted,
        and idle accounting counts them alone.
    """

    mode: TLSMode = attrs.field(
        default=TLSMode.PASSTHROUGH, converter=TLSMode, validator=_TLS_RULES["mode"]
    )
    certificate: str | None = attrs.field(
        default=None, validator=_TLS_RULES["certificate"]
    )
    trust: str | None = attrs.field(default=None, validator=_TLS_RULES["trust"])
    client_certificate: str | None = attrs.field(
        default=None, validator=_TLS_RULES["client_certificate"]
    )
    handshake_timeout: float = attrs.field(
        default=10.0, converter=float, validator=_TLS_RULES["handshake_timeout"]
    )
    inspect: bool = attrs.field(default=True, validator=_TLS_RULES["inspect"])

    @property
    def terminate(self) -> bool:
        """Whether TLS is terminated here."""
        return self.mode is TLSMode.TERMINATE


#: The rule of each ``[limits]`` key, which is also the rule of its attribute.
_LIMITS_RULES: dict[str, _Rule[Any]] = {
    "per_source_connections": _whole_rule(0),
    "per_source_rate": _whole_rule(0),
}


@attrs.frozen
class Limits:
    """What one client address may take, for pools that face the internet.

    A source is an IPv4 address, or an IPv6 /64 (what one subscriber is
    given).  A connection over a limit is closed as it is accepted.

    :ivar per_source_connections: the most connections one source may hold
        open at once; 0 for no limit.
    :ivar per_source_rate: the most new connections one source may open a
        second, with bursts of as many; 0 for no limit.
    """

    per_source_connections: int = attrs.field(
        default=0, validator=_LIMITS_RULES["per_source_connections"]
    )
    per_source_rate: int = attrs.field(
        default=0, validator=_LIMITS_RULES["per_source_rate"]
    )

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        return bool(self.per_source_connections or self.per_source_rate)


#: The rule of each ``[log]`` key, which is also the rule of its attribute.
_LOG_RULES: dict[str, _Rule[Any]] = {
    "connections": _Rule(_read_boolean, _check_boolean),
}


@attrs.frozen
class LogSettings:
    """What the log says beyond problems and changes.

    :ivar connections: whether each connection, as it closes, is one event
        (see :mod:`ocsbal._connlog`).
    """

    connections: bool = attrs.field(default=False, validator=_LOG_RULES["connections"])
