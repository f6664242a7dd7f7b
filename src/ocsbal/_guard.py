"""What keeps web pages and strangers out of the admin interface.

:class:`Guard` stands before the admin site's resources: a request a browser
may have sent for some web page is refused (403), and one without the token,
when there is one, asks for it (401).  See :mod:`ocsbal.admin` for the rules.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.resource import IResource, Resource

if TYPE_CHECKING:
    from twisted.web.server import Request

    from ocsbal._model import Admin

__all__ = ["Guard", "json_answer"]


def json_answer(request: Request, status: int, body: object) -> bytes:
    """Set ``request``'s status and type for ``body``, and return it as JSON."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body, indent=2).encode() + b"\n"


class Guard(Resource):
    """Lets a request through to ``root`` only if nothing about it is refused.

    First what keeps web pages out (see the module docstring), then the
    token.
    """

    def __init__(
        self,
        root: Resource,
        token: Callable[[], bytes | None],
        admin: Callable[[], Admin],
    ) -> None:
        super().__init__()
        self.root = root
        self.token = token
        self.admin = admin

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        refused = self._from_a_page(request)
        if refused is not None:
            return _Refused(403, refused)
        if not self._authorized(request):
            return _Unauthorized()
        child: IResource = self.root.getChildWithDefault(path, request)
        return child

    def _from_a_page(self, request: Request) -> str | None:
        """Why a browser may have sent ``request`` for a web page, if it may."""
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if host and not self._ours(host, request):
            return (
                f"Host {host} is not a name of this admin interface: use its "
                "address or localhost, or list the name in [admin] hosts"
            )
        origin = request.getHeader(b"origin")
        if origin is not None and origin.lower() != f"http://{host}".lower().encode():
            return (
                f"requests from the web page at {origin.decode('latin-1')} are "
                "refused: only this interface's own pages may call it"
            )
        if request.method not in (b"GET", b"HEAD"):
            kind = (request.getHeader(b"content-type") or b"").partition(b";")[0]
            if kind.strip().lower() != b"application/json":
                return (
                    "a request that changes anything must be sent as "
                    "Content-Type: application/json"
                )
        return None

    def _ours(self, host: str, request: Request) -> bool:
        """Whether ``host`` (a Host header) names this interface."""
        try:
            name = urlsplit(f"//{host}").hostname or ""
        except ValueError:  # a port that is no number
            return False
        if name == "localhost" or name in self.admin().hosts:
            return True
        here = request.getHost()
        if not isinstance(here, IPv4Address | IPv6Address):
            return True  # a Unix socket, which no browser reaches
        try:
            return ipaddress.ip_address(name) == ipaddress.ip_address(here.host)
        except ValueError:  # a name, not an address
            return False

    def _authorized(self, request: Request) -> bool:
        token = self.token()
        if token is None:
            return True
        scheme, _, credentials = (
            (request.getHeader(b"authorization") or b"").strip().partition(b" ")
        )
        if scheme.lower() == b"basic":
            try:
                credentials = base64.b64decode(credentials, validate=True)
            except binascii.Error:
                return False
            credentials = credentials.partition(b":")[2]
        elif scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), token)


class _Refused(Resource):
    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Request) -> bytes:
        return json_answer(request, self.status, {"error": self.message})


class _Unauthorized(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(
            b"www-authenticate", b'Bearer realm="ocsbal", Basic realm="ocsbal"'
        )
        return json_answer(request, 401, {"error": "a valid admin token is required"})
