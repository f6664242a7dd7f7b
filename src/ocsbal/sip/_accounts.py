"""What the SIP of a connection says of its registrations, and of many, counted."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple, cast

from ocsbal.sip._headers import SIPHeaders
from ocsbal.sip._inspector import (
    METHODS,
    Event,
    GaveUp,
    Ping,
    Pong,
    Request,
    Response,
    SIPInspector,
)

#: The expiry a registrar grants when nothing says otherwise (RFC 3261
#: §10.2.1.1).
DEFAULT_EXPIRES = 3600


class _Pending(NamedTuple):
    """A REGISTER awaiting its final response.

    :ivar aor: the address of record, from its To header.
    :ivar asked: each Contact's URI and the expiry it asked for, if it did.
    :ivar star: whether it was ``Contact: *``, removing every binding.
    """

    aor: str
    asked: tuple[tuple[str, int | None], ...]
    star: bool


#: Confirmed dialogs one connection's Call-IDs are kept for; past it the
#: connection is never quiet again, so that no call is cut for want of room.
MAX_DIALOGS = 32


class Registrations:
    """What one connection's SIP says about its registrations, and its calls.

    Fed the inspector's events of both directions with the time they were
    seen (it has no clock of its own), it matches each REGISTER with its
    final response by Call-ID and CSeq and keeps when each binding the
    REGISTER named expires (RFC 3261 §10.2.1, §10.3).  A Contact that asked
    for 0 is removed; any other is granted the ``expires`` of the same
    Contact in the 2xx, else the 2xx's Expires header, else what it asked
    (its ``expires``, else the REGISTER's Expires header), else
    :data:`DEFAULT_EXPIRES`.  ``Contact: *`` removes the address of
    record's bindings.  A REGISTER without a Contact only asks which
    bindings there are, and changes nothing; nor does any other response.

    :param max_pending: REGISTERs awaiting a response that are remembered;
        beyond it the oldest is forgotten, so a client cannot grow it.
    :param max_bindings: bindings remembered; beyond it the one that
        expires first is forgotten, for the same reason.
    It also follows whether the connection is :attr:`quiet`: no
    transaction open either way (a request seen, its final response not
    yet: on a stream, each request's final response comes back on the same
    connection, so they are counted, each way), and no confirmed INVITE
    dialog (a 2xx to an INVITE seen, its BYE not yet; kept by Call-ID).
    Only INVITEs' final responses and BYEs have a header read for it.

    :ivar keepalives: keep-alive pings and pongs seen.
    :ivar gave_up: why the connection's SIP is followed no more, if it is
        not (a :class:`GaveUp` reason).
    """

    # One per SIP connection, plain: mypyc compiles it into a native class.
    __slots__ = (
        "_dialogs",
        "_down_invites",
        "_down_open",
        "_expiries",
        "_lapsed",
        "_last",
        "_last_cseq",
        "_last_head",
        "_pending",
        "_too_many_dialogs",
        "_up_invites",
        "_up_open",
        "gave_up",
        "keepalives",
        "max_bindings",
        "max_pending",
    )

    def __init__(self, max_pending: int = 16, max_bindings: int = 64) -> None:
        self.max_pending = max_pending
        self.max_bindings = max_bindings
        self.keepalives = 0
        self.gave_up: str | None = None
        # The last message either way, as little of it as :attr:`last_message`
        # tells: its start line, and a response's CSeq method if its headers
        # were read, else its head, to read the CSeq from when asked.  Not
        # the message: a read header block holds several times the head,
        # and an idle connection keeps its last message for hours.
        self._last: bytes | None = None
        self._last_cseq: str | None = None
        self._last_head: bytes | None = None
        #: The REGISTERs awaiting their final response, once there is one:
        #: most of the time there is none, and an emptied dict keeps its table.
        self._pending: dict[tuple[str, int], _Pending] | None = None
        #: When each binding expires, by address of record and Contact URI.
        self._expiries: dict[tuple[str, str], float] = {}
        #: Whether the last :meth:`lapsed` found a missed refresh.
        self._lapsed = False
        # Requests (and INVITEs among them) awaiting their final response,
        # the client's (up) and the server's (down): plain ints, which a
        # compiled class holds unboxed, as a hundred thousand connections
        # have one of these each.
        self._up_open = 0
        self._up_invites = 0
        self._down_open = 0
        self._down_invites = 0
        #: The Call-IDs of the confirmed INVITE dialogs, once there is one.
        self._dialogs: dict[str, None] | None = None
        self._too_many_dialogs = False

    def __repr__(self) -> str:
        return (
            f"Registrations(bindings={self.bindings!r}, "
            f"keepalives={self.keepalives!r}, gave_up={self.gave_up!r})"
        )

    @property
    def last_message(self) -> str | None:
        """What the last message was, either way.

        A request's method and URI, or a response's status, reason and CSeq
        method.
        """
        line = self._last
        if line is None:
            return None
        method = self._last_cseq
        head = self._last_head
        if method is None and head is None:  # a request's
            name, uri = line.split(b" ")[:2]
            return f"{name.decode('ascii')} {uri.decode('utf-8', 'replace')}"
        if method is None:
            method = _cseq_method(SIPHeaders(cast(bytes, head)[len(line) :]))
        reason = line[12:].decode("utf-8", "replace")
        return f"{line[8:11].decode('ascii')} {reason} ({method})"

    def _keep_request(self, request: Request) -> None:
        self._last = request.start_line
        self._last_cseq = self._last_head = None

    def _keep_response(self, response: Response) -> None:
        self._last = response.start_line
        if response.headers_read:
            self._last_cseq = _cseq_method(response.headers)
            self._last_head = None
        else:  # reading them now would cost every response what few ask
            self._last_cseq = None
            self._last_head = response.head

    def from_client(self, event: Event, now: float) -> None:  # noqa: ARG002
        """Count an event of the client's direction, seen at ``now``.

        A request but a REGISTER or a BYE costs nothing more than being
        counted and kept as the last message: only theirs are read.
        """
        kind = type(event)
        if kind is Request:
            request = cast(Request, event)
            self._keep_request(request)
            self._asked(request, from_client=True)
            if request.method != "REGISTER":
                return
            headers = request.headers
            if not (
                headers.call_id
                and headers.cseq
                and headers.to_uri
                and (headers.contacts or headers.contact_star)
            ):
                return
            asked = tuple(
                (c.uri, headers.expires if c.expires is None else c.expires)
                for c in headers.contacts
            )
            key = (headers.call_id, headers.cseq[0])
            pending = self._pending
            if pending is None:
                pending = self._pending = {}
            pending.pop(key, None)  # a retransmission counts as the newest
            pending[key] = _Pending(headers.to_uri, asked, headers.contact_star)
            if len(pending) > self.max_pending:
                del pending[next(iter(pending))]
        elif kind is Response:
            response = cast(Response, event)
            self._keep_response(response)
            if response.status >= 200:
                self._answered(response, to_client=False)
        elif kind is Ping or kind is Pong:
            self.keepalives += 1

    def from_server(self, event: Event, now: float) -> None:
        """Count an event of the server's direction, seen at ``now``.

        A response is read only while a REGISTER waits for its own, and only
        a final one.
        """
        kind = type(event)
        if kind is Response:
            response = cast(Response, event)
            self._keep_response(response)
            if response.status >= 200:
                self._answered(response, to_client=True)
                if self._pending:
                    self._registered(response, now)
        elif kind is Request:
            request = cast(Request, event)
            self._keep_request(request)
            self._asked(request, from_client=False)
        elif kind is Ping or kind is Pong:
            self.keepalives += 1

    def _registered(self, response: Response, now: float) -> None:
        """Take a final response that may be a REGISTER's, seen at ``now``."""
        headers = response.headers
        cseq = headers.cseq
        waiting = self._pending
        if not (cseq and cseq[1] == "REGISTER" and headers.call_id and waiting):
            return
        pending = waiting.pop((headers.call_id, cseq[0]), None)
        if not waiting:
            self._pending = None
        if pending is None or response.status >= 300:
            return
        if pending.star:
            for binding in [b for b in self._expiries if b[0] == pending.aor]:
                del self._expiries[binding]
        # The first time a 2xx lists a Contact is what it says of it.
        answered = {c.uri: c.expires for c in reversed(headers.contacts)}
        for uri, asked in pending.asked:
            granted = _granted(asked, answered.get(uri), headers.expires)
            binding = (pending.aor, uri)
            if not granted:
                self._expiries.pop(binding, None)
                continue
            if (
                binding not in self._expiries
                and len(self._expiries) >= self.max_bindings
            ):
                first = min(self._expiries, key=self._expiries.__getitem__)
                del self._expiries[first]
            self._expiries[binding] = now + granted

    def _asked(self, request: Request, from_client: bool) -> None:
        """Count a request, the client's or the server's."""
        method = request.method
        if method == "ACK":  # an ACK is answered by nothing
            return
        invite = 1 if method == "INVITE" else 0
        if from_client:
            self._up_open += 1
            self._up_invites += invite
        else:
            self._down_open += 1
            self._down_invites += invite
        if method == "BYE":
            self._bye(request)

    def _answered(self, response: Response, to_client: bool) -> None:
        """Count a final response to a request of the client's, or the server's.

        INVITEs are counted apart, by their responses' CSeq, so that a stray
        response can never stand for an INVITE's and hide its call.  A 2xx
        to an INVITE whose answer came already (the UAS retransmits it until
        the ACK, on any transport, and a forked INVITE may be answered by
        several callees: RFC 3261 §13.3.1.4, §13.2.2.4) answers nothing, so
        it cannot stand for another request's answer either; it is looked
        for only while a call is up, the only time one can come.
        """
        if to_client:
            if self._up_invites:
                self._up_invites -= self._final(response)
            elif self._dialogs and _answers_invite(response):
                return
            self._up_open = max(0, self._up_open - 1)
        else:
            if self._down_invites:
                self._down_invites -= self._final(response)
            elif self._dialogs and _answers_invite(response):
                return
            self._down_open = max(0, self._down_open - 1)

    def _final(self, response: Response) -> int:
        """1 if ``response``, final, answers an INVITE (a 2xx confirms its dialog)."""
        headers = response.headers
        cseq = headers.cseq
        if cseq is None or cseq[1] != "INVITE":
            return 0
        call_id = headers.call_id
        if response.status < 300 and call_id:
            dialogs = self._dialogs
            if dialogs is None:
                dialogs = self._dialogs = {}
            if len(dialogs) >= MAX_DIALOGS:
                self._too_many_dialogs = True
            dialogs[call_id] = None
        return 1

    def _bye(self, request: Request) -> None:
        call_id = request.headers.call_id
        if call_id and self._dialogs:
            self._dialogs.pop(call_id, None)

    @property
    def transactions(self) -> int:
        """Transactions open, either way."""
        return max(self._up_open, self._up_invites) + max(
            self._down_open, self._down_invites
        )

    @property
    def dialogs(self) -> int:
        """Confirmed INVITE dialogs, not yet ended by a BYE."""
        return len(self._dialogs) if self._dialogs else 0

    @property
    def quiet(self) -> bool:
        """Whether nothing is under way: no transaction, no call.

        Never while the SIP is not followed (:attr:`gave_up`), nor once
        there were more dialogs at once than :data:`MAX_DIALOGS`.
        """
        return not (
            self._up_open
            or self._down_open
            or self._up_invites
            or self._down_invites
            or self._dialogs
            or self._too_many_dialogs
            or self.gave_up
        )

    @property
    def bindings(self) -> dict[str, float]:
        """When each registered address of record's last binding expires."""
        aors: dict[str, float] = {}
        for (aor, _), expiry in self._expiries.items():
            aors[aor] = max(expiry, aors.get(aor, expiry))
        return aors

    @property
    def expiry(self) -> float | None:
        """When the last registration on this connection expires, if any."""
        return max(self._expiries.values(), default=None)

    def missed_refresh(self, now: float, grace: float) -> bool:
        """Whether a registration expired ``grace`` ago without a refresh."""
        expiry = self.expiry
        return expiry is not None and now > expiry + grace

    def lapsed(self, now: float, grace: float) -> bool:
        """Whether a refresh was missed since this was last asked.

        True once for each lapse: a refresh answered afterwards ends it (as
        does the last binding's removal), and a later lapse is a new one.
        """
        missed = self.missed_refresh(now, grace)
        new, self._lapsed = missed and not self._lapsed, missed
        return new


def _cseq_method(headers: SIPHeaders) -> str:
    """A response's CSeq method, as :attr:`Registrations.last_message` tells it."""
    cseq = headers.cseq
    return cseq[1] if cseq else "?"


def _answers_invite(response: Response) -> bool:
    cseq = response.headers.cseq
    return cseq is not None and cseq[1] == "INVITE"


def _granted(asked: int | None, answered: int | None, expires: int | None) -> int:
    """How long a 2xx keeps a binding.

    :param asked: the expiry the REGISTER asked for the binding, if any.
    :param answered: the 2xx's ``expires`` parameter of the binding, if any.
    :param expires: the 2xx's Expires header, if any.
    """
    if asked == 0:  # a removal, which no registrar turns into a binding
        return 0
    return next(
        value
        for value in (answered, expires, asked, DEFAULT_EXPIRES)
        if value is not None
    )


class SIPTally:
    """What the SIP of many connections said, counted.

    :ivar keepalives: keep-alives, ``ping`` or ``pong``.
    :ivar gave_up: inspections given up, by reason.
    """

    __slots__ = ("_by_class", "_by_method", "gave_up", "keepalives")

    def __init__(self) -> None:
        # Every message is counted, so in plain counts with every key there
        # from the start: two native steps, where a Counter's += is a dozen.
        self._by_method: dict[str, int] = dict.fromkeys([*METHODS, "other"], 0)
        self._by_class: list[int] = [0] * len(_CLASSES)
        self.keepalives: Counter[str] = Counter()
        self.gave_up: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"SIPTally(requests={self.requests!r}, responses={self.responses!r}, "
            f"keepalives={self.keepalives!r}, gave_up={self.gave_up!r})"
        )

    @property
    def requests(self) -> Counter[str]:
        """Requests seen, by method (:data:`METHODS`, else ``other``)."""
        return Counter({name: n for name, n in self._by_method.items() if n})

    @property
    def responses(self) -> Counter[str]:
        """Responses seen, by class: ``1xx`` to ``6xx``."""
        return Counter({_CLASSES[i]: n for i, n in enumerate(self._by_class) if n})

    def count(self, event: Event) -> None:
        """Count one event of an inspector."""
        kind = type(event)
        if kind is Request:
            method = cast(Request, event).method
            by_method = self._by_method
            if method in by_method:
                by_method[method] += 1
            else:
                by_method["other"] += 1
        elif kind is Response:
            self._by_class[cast(Response, event).status // 100] += 1
        elif kind is GaveUp:
            self.gave_up[cast(GaveUp, event).reason] += 1
        else:
            self.keepalives["ping" if kind is Ping else "pong"] += 1


#: A status's class by its first digit.
_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")


def follow(
    inspector: SIPInspector,
    account: Registrations,
    tally: SIPTally,
    data: bytes,
    now: float,
) -> str | None:
    """What the relay does with each chunk it has relayed on a SIP connection.

    ``data`` is fed to ``inspector`` (of the client's direction, or the
    server's); what it says is counted in the pool's ``tally`` and in the
    connection's ``account``, at ``now``.

    :return: why the inspector gave up, if it has: the connection goes on
        as plain TCP.
    """
    events = inspector.feed(data)
    if events:
        count = tally.count
        observe = account.from_server if inspector.from_server else account.from_client
        for event in events:
            count(event)
            observe(event, now)
    return inspector.gave_up
