"""The admin API against hostile requests, in memory: no sockets, no reactor.

Most requests go through treq's StubTreq, as in test_admin.py; those that
only a raw HTTP connection can make (a NUL in the request line, a body
announced but never sent) are written to the admin site's own HTTP channel
over a StringTransport.  Every refused request must get a 4xx with a JSON
``{"error": ...}`` and change nothing, and the admin token must never
appear in any log event, whatever was asked.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

import test_admin
from ocsbal import PoolService
from ocsbal._api import MAX_BODY
from ocsbal._history import History
from ocsbal.admin import admin_site
from ocsbal.config import Admin, parse

URL = "http://127.0.0.1:9900"
TOKEN = b"tok-7f3c9a1e5b2d4c6e8a0f1b3d5c7e9a2b"
GOOD = {"authorization": [f"Bearer {TOKEN.decode()}"]}
CHALLENGE = ['Bearer realm="ocsbal", Basic realm="ocsbal"']


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has fired (StubTreq fires at once)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class API:
    """A pool service with its admin site, called through StubTreq."""

    def __init__(self, token: bytes | None, admin: Admin | None = None) -> None:
        reactor = MemoryReactorClock()
        self.service = PoolService(test_admin.makePool(), reactor)
        self.service.startService()
        self.site = admin_site(
            [(self.service, History(reactor))],
            lambda: token,
            admin=lambda: admin or Admin(),
        )
        self.treq = StubTreq(self.site.resource)
        self.token = token
        self.channels: list[Any] = []

    def close(self) -> None:
        """Close the raw connections left open (a body still expected)."""
        for channel in self.channels:
            channel.connectionLost(Failure(ConnectionDone()))

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, list[str]] | None = None,
    ) -> tuple[int, Any, dict[str, list[str]]]:
        """Status, body (JSON decoded if JSON) and headers of one request.

        Unless ``headers`` are given, the token is sent, and a request that
        changes anything is sent as JSON, as every client of the API does.
        """
        if headers is None:
            headers = dict(GOOD) if self.token else {}
            if method not in ("GET", "HEAD"):
                headers["content-type"] = ["application/json"]
        kw: dict[str, Any] = {"headers": headers}
        if body is not None:
            kw["data"] = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = result(self.treq.request(method, URL + path, **kw))
        content = result(response.content())
        raw = dict(response.headers.getAllRawHeaders())
        got = {k.decode().lower(): [v.decode() for v in vs] for k, vs in raw.items()}
        if got.get("content-type") == ["application/json"] and content:
            return response.code, json.loads(content), got
        return response.code, content, got

    def state(self) -> tuple[object, ...]:
        """Everything a refused request must leave as it was."""
        backends = self.service.servers.backends.values()
        return (
            self.service.pool,
            [(b.name, b.weight, b.state, b.removed, b.health.up) for b in backends],
            sorted(b.name for b in self.service.servers.leaving),
            self.call("GET", "/api/pool")[1],
            self.call("GET", "/api/servers")[1],
        )

    def raw(self, request: bytes) -> StringTransport:
        """Write ``request`` to a new HTTP connection of the admin site."""
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        self.channels.append(channel)
        channel.dataReceived(request)
        return transport


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event of the test; none may hold the token."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
    for event in events:
        text = repr(event) + (formatEvent(event) or "")
        failure = event.get("log_failure")
        if failure is not None:
            text += failure.getTraceback()
        assert TOKEN.decode() not in text, event
        assert TOKEN.decode()[:16] not in text, event


@pytest.fixture
def api(logged: list[dict[str, Any]]) -> Iterator[API]:
    api = API(token=None)
    yield api
    api.close()


@pytest.fixture
def guarded(logged: list[dict[str, Any]]) -> Iterator[API]:
    api = API(token=TOKEN)
    yield api
    api.close()


def is_json_error(answer: tuple[int, Any, dict[str, list[str]]], status: int) -> bool:
    code, body, headers = answer
    return (
        code == status
        and headers.get("content-type") == ["application/json"]
        and isinstance(body, dict)
        and list(body) == ["error"]
        and isinstance(body["error"], str)
        and len(body["error"]) > 0
    )


MALFORMED = [
    b"",
    b"{",
    b'{"name": "fe3",}',
    b'{"name": "fe3" "address": "127.0.1.13"}',
    b'{"name": "fe3", "address": "127.0.1.13"} and more',
    b"\xff\xfe\x00{",
    b'{"name": "\xff\xfe"}',
    b"null",
    b'"fe3"',
    b"[]",
    b"1e999",
    b"{'name': 'fe3'}",
    b'{"weight": 1' + b"0" * 5000 + b"}",
]


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/api/servers"), ("PATCH", "/api/servers/fe2")]
)
def test_malformed_json_is_a_400_and_changes_nothing(
    guarded: API, method: str, path: str, body: bytes
) -> None:
    """Anything that is not a JSON object is refused with why, changing nothing."""
    before = guarded.state()
    answer = guarded.call(method, path, body)
    assert is_json_error(answer, 400), answer
    assert guarded.state() == before


@pytest.mark.parametrize("body", [b"[" * 5000, b'{"a":' * 5000])
def test_deeply_nested_json_is_a_400(guarded: API, body: bytes) -> None:
    """A few kilobytes of ``[[[[`` are malformed JSON like any other: 400."""
    before = guarded.state()
    answer = guarded.call("POST", "/api/servers", body)
    assert is_json_error(answer, 400), answer
    assert guarded.state() == before


@pytest.mark.parametrize("size", [MAX_BODY + 1, 10 * 1024 * 1024])
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/api/servers"), ("PATCH", "/api/servers/fe2")]
)
def test_a_body_over_64_kib_is_a_413(
    guarded: API, method: str, path: str, size: int
) -> None:
    """Bodies over the cap, up to 10 MB, are refused with 413 and change nothing.

    Without the token the same body is a 401, whatever its size.
    """
    before = guarded.state()
    body = b'{"name": "' + b"x" * size + b'"}'
    answer = guarded.call(method, path, body)
    assert is_json_error(answer, 413), answer[:2]
    assert answer[1]["error"] == f"the body is over {MAX_BODY} bytes"
    json_only = {"content-type": ["application/json"]}
    answer = guarded.call(method, path, body, headers=json_only)
    assert is_json_error(answer, 401), answer[:2]
    assert guarded.state() == before


@pytest.mark.parametrize("authorized", [True, False], ids=["with-token", "without"])
def test_a_huge_body_is_never_stored(
    guarded: API, authorized: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body far over the cap is answered 413 (401 without the token).

    twisted.web would spool it to a temporary file before any resource saw
    it, token or not; the admin site keeps its first 64 KiB in memory and
    drops the rest as it comes.
    """

    def no_spooling() -> None:
        raise AssertionError("a body was spooled to disk")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_spooling)
    auth = b"Authorization: Bearer " + TOKEN + b"\r\n" if authorized else b""
    size = 3 * 1024 * 1024
    transport = guarded.raw(
        b"POST /api/servers HTTP/1.1\r\nHost: localhost\r\n"
        + auth
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size
        + b"x" * size
    )
    status = b" 413 " if authorized else b" 401 "
    assert transport.value().startswith(b"HTTP/1.1" + status), transport.value()


UNKNOWN_FIELDS = [
    ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13", "admin": True}),
    (
        "POST",
        "/api/servers",
        {"name": "fe3", "address": "127.0.1.13", "state": "drain"},
    ),
    ("POST", "/api/servers", {"__proto__": {}, "name": "fe3", "address": "127.0.1.13"}),
    ("PATCH", "/api/servers/fe2", {"name": "fe9"}),
    ("PATCH", "/api/servers/fe2", {"address": "127.0.1.99", "weight": 1}),
    ("PATCH", "/api/servers/fe2", {"removed": True}),
    ("PATCH", "/api/servers/fe2", {"": 1}),
]


@pytest.mark.parametrize(("method", "path", "body"), UNKNOWN_FIELDS)
def test_an_unknown_field_is_a_400_naming_it(
    guarded: API, method: str, path: str, body: dict[str, Any]
) -> None:
    """A field the API does not take is refused, naming it and the allowed ones."""
    before = guarded.state()
    answer = guarded.call(method, path, body)
    assert is_json_error(answer, 400), answer
    assert "unknown field" in answer[1]["error"]
    assert "allowed: " in answer[1]["error"]
    assert guarded.state() == before


WRONG_TYPES = [
    ("POST", "/api/servers", {"name": 5, "address": "127.0.1.13"}),
    ("POST", "/api/servers", {"name": None, "address": "127.0.1.13"}),
    ("POST", "/api/servers", {"name": "fe3", "address": ["127.0.1.13"]}),
    ("POST", "/api/servers", {"name": "fe3", "address": {"v4": "127.0.1.13"}}),
    ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13", "weight": "9"}),
    ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13", "weight": 1.5}),
    ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13", "weight": 1e2}),
    ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13", "weight": None}),
    ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13", "weight": -1}),
    ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13", "weight": 2**70}),
    ("POST", "/api/servers", {"name": "fe 3", "address": "127.0.1.13"}),
    ("POST", "/api/servers", {"name": "fe3\u0000", "address": "127.0.1.13"}),
    ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13\u0000"}),
    ("POST", "/api/servers", {"name": "\ud800", "address": "127.0.1.13"}),
    ("POST", "/api/servers", {"name": "x" * 10000, "address": "127.0.1.13"}),
    ("PATCH", "/api/servers/fe2", {"weight": True}),
    ("PATCH", "/api/servers/fe2", {"weight": "50"}),
    ("PATCH", "/api/servers/fe2", {"weight": 65536}),
    ("PATCH", "/api/servers/fe2", {"state": 1}),
    ("PATCH", "/api/servers/fe2", {"state": None}),
    ("PATCH", "/api/servers/fe2", {"state": "DRAIN"}),
    ("PATCH", "/api/servers/fe2", {"state": ["drain"]}),
    ("PATCH", "/api/servers/fe2", {"weight": 1, "state": "gone"}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRONG_TYPES)
def test_a_wrong_type_or_value_is_a_400_and_changes_nothing(
    guarded: API, method: str, path: str, body: dict[str, Any]
) -> None:
    """Each field must be of its type and range; one bad field changes nothing."""
    before = guarded.state()
    answer = guarded.call(method, path, body)
    assert is_json_error(answer, 400), answer
    assert guarded.state() == before


BAD_CREDENTIALS = [
    {},
    {"authorization": [""]},
    {"authorization": ["Bearer"]},
    {"authorization": ["Bearer "]},
    {"authorization": ["Bearer wrong"]},
    {"authorization": [f"Bearer {TOKEN.decode()[:-1]}"]},
    {"authorization": [f"Bearer {TOKEN.decode()}x"]},
    {"authorization": [f"Bearer {TOKEN.decode().upper()}"]},
    {"authorization": [f"Token {TOKEN.decode()}"]},
    {"authorization": [TOKEN.decode()]},
    {"authorization": [f"Basic {base64.b64encode(TOKEN + b':').decode()}"]},
    {"authorization": [f"Basic {base64.b64encode(TOKEN).decode()}"]},
    {"authorization": [f"Basic {TOKEN.decode()}"]},
    {"authorization": ["Basic !!!"]},
    {"authorization": [f"Bearer {TOKEN.decode()}, Bearer {TOKEN.decode()}"]},
    {"cookie": [f"token={TOKEN.decode()}"]},
    {"x-admin-token": [TOKEN.decode()]},
]


@pytest.mark.parametrize("headers", BAD_CREDENTIALS, ids=range(len(BAD_CREDENTIALS)))
def test_a_missing_or_wrong_token_is_a_401_with_a_challenge(
    guarded: API, headers: dict[str, list[str]]
) -> None:
    """Without the right token every method on every path is a 401 and does nothing.

    The 401 says how to authenticate (WWW-Authenticate, Bearer and Basic),
    and is the same for paths that exist and for those that do not, so it
    tells nothing of the pool.
    """
    before = guarded.state()
    for method, path, body in [
        ("GET", "/api/pool", None),
        ("GET", "/", None),
        ("GET", "/metrics", None),
        ("GET", "/api/servers/fe1", None),
        ("GET", "/api/servers/no-such-server", None),
        ("GET", "/no/such/path", None),
        ("GET", "/api/servers/..%2F..%2Fpool", None),
        ("GET", f"/api/pool?token={TOKEN.decode()}", None),
        ("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13"}),
        ("PATCH", "/api/servers/fe1", {"state": "maint"}),
        ("DELETE", "/api/servers/fe1?force=1", None),
        ("PUT", "/api/pool", b"{}"),
    ]:
        sent = headers
        if method not in ("GET", "HEAD"):
            sent = {"content-type": ["application/json"], **headers}
        answer = guarded.call(method, path, body, headers=sent)
        assert is_json_error(answer, 401), (method, path, answer)
        assert answer[1]["error"] == "a valid admin token is required"
        assert answer[2]["www-authenticate"] == CHALLENGE
    status, _, headers_ = guarded.call("HEAD", "/api/pool", headers=headers)
    assert (status, headers_["www-authenticate"]) == (401, CHALLENGE)
    assert guarded.state() == before


GOOD_PATHS = [
    "/api/servers/..",
    "/api/servers/../pool",
    "/api/%2e%2e/pool",
    "/api%2Fpool",
    "/api/servers/fe1%2F..%2Ffe2",
    "/api/servers/fe1/%2e%2e",
    "/api/servers/fe1/..",
    "/api/servers/fe1/x",
    "/api//pool",
    "/api/",
    "/x/..",
    "/%00",
    "/api/servers/fe1%00",
    "/api/servers/%00",
    "/api/servers/%ff",
    "/api/servers/%0d%0aSet-Cookie:%20x",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/" + "a" * 8000,
    "/api/servers/" + "x" * 8000,
]


@pytest.mark.parametrize("path", GOOD_PATHS, ids=[p[:40] for p in GOOD_PATHS])
def test_path_tricks_are_a_json_404_and_change_nothing(guarded: API, path: str) -> None:
    """``..``, encoded slashes and NULs, double slashes, 8 kB paths: a JSON 404.

    Nothing is reached but what the path names: no server is read, patched
    or removed through a path that merely contains its name.
    """
    before = guarded.state()
    for method, body in [
        ("GET", None),
        ("PATCH", {"state": "drain"}),
        ("DELETE", None),
    ]:
        answer = guarded.call(method, path, body)
        assert is_json_error(answer, 404), (method, answer[:2])
        # What the path says is only ever inside the JSON: no header of its own.
        assert "set-cookie" not in answer[2]
    assert guarded.state() == before


#: Paths that name nothing, though they start like one that does.
BELOW_PATHS = [
    "/api/pool/x",
    "/api/pool/../../etc/passwd",
    "/api/connections/x",
    "/metrics/x",
    "//api/pool",
    "/api",
]


@pytest.mark.parametrize("path", BELOW_PATHS)
def test_a_path_below_a_resource_is_a_json_404(guarded: API, path: str) -> None:
    """A path that names no resource is a JSON 404, even below one that exists."""
    assert is_json_error(guarded.call("GET", path), 404)


def test_what_only_a_raw_connection_can_send_is_refused(guarded: API) -> None:
    """Request lines the URL parsers would not build are refused before the API.

    A NUL or a bare CR in the request line, a request line or header over
    twisted.web's 16 KiB limit, and binary junk are refused by twisted.web
    itself (a bare ``400`` without JSON, or the connection closed without
    a word): never answered with anything of the pool.
    """
    before = guarded.state()
    auth = b"Authorization: Bearer " + TOKEN + b"\r\n"
    for request in [
        b"GET /api/pool\x00 HTTP/1.1\r\nHost: localhost\r\n" + auth + b"\r\n",
        b"GET /api/pool\rX HTTP/1.1\r\nHost: localhost\r\n" + auth + b"\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: localhost\r\n" + auth + b"\r\n",
        b"GET /api/pool HTTP/1.1\r\nHost: localhost\r\nX: "
        + b"y" * 20000
        + b"\r\n"
        + auth,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
        + bytes(range(256))
        + b"\r\n\r\n",
        b"GET /api/pool HTTP/9.9\r\nHost: localhost\r\n" + auth + b"\r\n",
    ]:
        transport = guarded.raw(request)
        out = transport.value()
        assert out in (b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"), (request[:40], out)
        assert transport.disconnecting, request[:40]
    assert guarded.state() == before


def test_a_good_token_still_works_after_all_that(guarded: API) -> None:
    """The token, as Bearer or as the Basic password, is accepted (the control)."""
    basic = base64.b64encode(b"anyone:" + TOKEN).decode()
    for headers in [GOOD, {"authorization": [f"Basic {basic}"]}]:
        assert guarded.call("GET", "/api/pool", headers=headers)[0] == 200
    status, server, _ = guarded.call("PATCH", "/api/servers/fe2", {"weight": 7})
    assert (status, server["weight"]) == (200, 7)


def test_without_a_token_file_the_same_requests_are_refused_the_same_way(
    api: API,
) -> None:
    """Tokenless (loopback) admin: bad bodies and paths are refused just as well."""
    before = api.state()
    assert is_json_error(api.call("POST", "/api/servers", b"{"), 400)
    assert is_json_error(api.call("POST", "/api/servers", {"name": 1}), 400)
    assert is_json_error(api.call("DELETE", "/api/servers/fe1%2F..%2Ffe2"), 404)
    assert is_json_error(api.call("PATCH", "/api/servers/fe2", b"x" * 70000), 413)
    assert api.state() == before


def test_the_admin_interface_listens_on_loopback_unless_configured() -> None:
    """An ``[admin]`` section without ``listen`` binds 127.0.0.1:9900 only.

    Listening elsewhere takes an explicit ``listen``; without an ``[admin]``
    section nothing but the VIP's ports is bound.
    """
    assert Admin().listen == "tcp:9900:interface=127.0.0.1"
    minimal = (
        "[pool]\nname = p\nfqdn = p.example.com\nvip = 127.0.1.10\n"
        "[ports]\n5060 = sip\n[server:fe1]\naddress = 127.0.1.11\n"
    )
    for text, admin in [
        (minimal + "[admin]\n", ("127.0.0.1", 9900)),
        (minimal + "[admin]\nlisten = tcp:9901\n", ("", 9901)),
        (minimal, None),
    ]:
        reactor = MemoryReactorClock()
        PoolService(parse(text), reactor).startService()
        bound = [(interface, port) for port, _, _, interface in reactor.tcpServers]
        assert bound == [("127.0.1.10", 5060)] + ([admin] if admin else [])


# -- web pages: cross-site requests and DNS rebinding (issue 11) ----------------

ATTACKER = "http://attacker.example"
SERVER = {"name": "evil", "address": "127.0.1.66", "weight": 65535}


def test_a_cross_site_text_plain_post_is_refused(api: API) -> None:
    """What a page's fetch(..., {mode: "no-cors"}) sends, with no preflight:
    it added a server of the page's choosing before."""
    before = api.state()
    for headers in (
        {"content-type": ["text/plain"], "origin": [ATTACKER]},
        {"content-type": ["text/plain"]},  # an origin may be withheld
        {"content-type": ["application/json"], "origin": [ATTACKER]},
        {"content-type": ["application/json"], "origin": ["null"]},
        {"content-type": ["application/x-www-form-urlencoded"]},
    ):
        answer = api.call("POST", "/api/servers", SERVER, headers)
        assert is_json_error(answer, 403), (headers, answer)
    assert api.state() == before


def test_each_refusal_says_why(api: API) -> None:
    _, cross, _ = api.call("GET", "/api/pool", None, {"origin": [ATTACKER]})
    assert cross["error"] == (
        "requests from the web page at http://attacker.example are refused: "
        "only this interface's own pages may call it"
    )
    _, plain, _ = api.call("DELETE", "/api/servers/fe1", None, {})
    assert plain["error"] == (
        "a request that changes anything must be sent as Content-Type: application/json"
    )
    _, named, _ = api.call("GET", "/api/pool", None, {"host": ["attacker.example"]})
    assert named["error"] == (
        "Host attacker.example is not a name of this admin interface: use its "
        "address or localhost, or list the name in [admin] hosts"
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/connections", None),
        ("GET", "/", None),
        ("GET", "/metrics", None),
        ("PATCH", "/api/servers/fe1", {"state": "maint"}),
        ("DELETE", "/api/servers/fe1", None),
    ],
)
def test_a_name_of_another_site_as_host_is_refused(
    api: API, method: str, path: str, body: object
) -> None:
    """DNS rebinding: a page's own name, pointed at the interface, which the
    browser then takes for the page's own origin."""
    before = api.state()
    for host in ("attacker.example:9900", "attacker.example", "127.0.0.1.nip.io"):
        headers = {"host": [host], "content-type": ["application/json"]}
        assert is_json_error(api.call(method, path, body, headers), 403), host
    assert api.state() == before


def test_its_address_localhost_and_listed_names_are_its_own() -> None:
    api = API(token=None, admin=Admin(hosts=("lb1.contoso.com",)))
    try:
        for host in ("127.0.0.1:9900", "localhost:9900", "LB1.contoso.com:9900"):
            status, _, _ = api.call("GET", "/api/pool", None, {"host": [host]})
            assert status == 200, host
            origin = {"host": [host], "origin": [f"http://{host}"]}
            status, _, _ = api.call("GET", "/api/pool", None, origin)
            assert status == 200, host
        for host in ("127.0.0.2:9900", "[::1]:9900", "lb2.contoso.com", "x:y"):
            status, _, _ = api.call("GET", "/api/pool", None, {"host": [host]})
            assert status == 403, host
        # Its own page's origin, but another port's: another origin.
        other = {"host": ["localhost:9900"], "origin": ["http://localhost:8080"]}
        assert api.call("GET", "/api/pool", None, other)[0] == 403
    finally:
        api.close()


def test_a_page_is_refused_before_the_token_is_asked_for(guarded: API) -> None:
    headers = {"origin": [ATTACKER], **GOOD}
    assert is_json_error(guarded.call("GET", "/api/pool", None, headers), 403)
