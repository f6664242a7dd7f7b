"""TLS termination on ``sips`` ports: the pool's certificates, loaded and checked.

With ``[tls] mode = terminate`` clients handshake with ocsbal, which presents
the pool's certificate, and ocsbal opens TLS of its own to the server it
picks, verifying the server's certificate against ``trust`` and the
server's ``tls_name`` with service_identity.  Everything here is built
once, when the pool starts, so a bad file stops the start rather than a
connection; the contexts are then shared by every connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns, verify_certificate_hostname
from twisted.internet import defer
from twisted.internet import error as failures
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

    from ocsbal._model import Pool, Server, TLSSettings

#: The oldest TLS spoken on either side (TLS 1.0 and 1.1 are broken).
MINIMUM_VERSION = TLSVersion.TLSv1_2


class TLSSetupError(ValueError):
    """``[tls]`` files cannot be used; the message names each key, file and why.

    :ivar problems: ``(key, file, why)`` of each, a line of the message each.
    """

    def __init__(self, problems: Sequence[tuple[str, str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "\n".join(f"[tls] {key} = {path}: {why}" for key, path, why in problems)
        )


def tls_reason(error: BaseException) -> str:
    """Why a TLS handshake failed, in a few words for a log line."""
    if isinstance(error, SSL.Error):
        reasons = [r for *_, r in error.args[0] if r] if error.args else []
        return f"TLS handshake failed: {', '.join(reasons) or 'TLS error'}"
    if isinstance(error, VerificationError):
        names = ", ".join(
            _pattern(getattr(e.mismatched_id, "hostname", None) or e.mismatched_id)
            for e in error.errors
        )
        return f"TLS handshake failed: certificate not issued to {names}"
    return str(error) or type(error).__name__


def failure_kind(error: BaseException) -> str:
    """What kind of failure a connection attempt to a server met, in a word.

    ``refused``, ``timeout``, ``unreachable``, ``tls`` (the handshake, or
    the certificate), ``closed`` (before it was made) or ``other``: the
    ``reason`` of ``ocsbal_server_connect_failures_total``.
    """
    if isinstance(error, SSL.Error | VerificationError):
        return "tls"
    if isinstance(error, failures.ConnectionRefusedError):
        return "refused"
    timeouts = failures.TimeoutError | failures.TCPTimedOutError | defer.TimeoutError
    if isinstance(error, timeouts):
        return "timeout"
    if isinstance(error, failures.NoRouteError | failures.ConnectBindError):
        return "unreachable"
    if isinstance(error, failures.ConnectionDone | failures.ConnectionLost):
        return "closed"
    return "other"


class TLSContexts:
    """The TLS both sides of a terminated ``sips`` connection speak.

    :param settings: the pool's ``[tls]`` section, with ``mode = terminate``.
    :param fqdn: the pool FQDN, which the pool's certificate must carry.
    :raises TLSSetupError: naming every file that cannot be read or used.

    :ivar accepting: what clients handshake with: the pool's key and
        certificate chain, TLS 1.2 or later.
    """

    def __init__(self, settings: TLSSettings, fqdn: str) -> None:
        self.accepting, self._trust, self._own = _read_files(settings, fqdn)
        self._connecting: dict[str, IOpenSSLClientConnectionCreator] = {}

    def connecting(self, server: Server) -> IOpenSSLClientConnectionCreator:
        """What to handshake with ``server``: its certificate name checked."""
        name = server.certificate_name
        creator = self._connecting.get(name)
        if creator is None:
            # One per name: building a context is dear, and a pool has few.
            creator = self._connecting[name] = optionsForClientTLS(
                name,
                trustRoot=self._trust,
                clientCertificate=self._own,
                extraCertificateOptions={"raiseMinimumTo": MINIMUM_VERSION},
            )
        return creator


def tls_contexts(pool: Pool) -> TLSContexts | None:
    """The TLS of ``pool``'s terminated ``sips`` ports; ``None`` for passthrough.

    :raises TLSSetupError: if a ``[tls]`` file cannot be read or used.
    """
    return TLSContexts(pool.tls, pool.fqdn) if pool.tls.terminate else None


def tls_problems(settings: TLSSettings, fqdn: str | None) -> list[tuple[str, str, str]]:
    """Why each ``[tls]`` file of a terminating pool cannot be used, if any.

    Each is ``(key, file, why)``, as in :class:`TLSSetupError`: the files
    are read as :func:`tls_contexts` reads them, and the pool's certificate
    checked against ``fqdn``, unless that is not known (``None``).
    """
    try:
        _read_files(settings, fqdn)
    except TLSSetupError as e:
        return list(e.problems)
    return []


_R = TypeVar("_R")


def _read_files(
    settings: TLSSettings, fqdn: str | None
) -> tuple[CertificateOptions, IOpenSSLTrustRoot, PrivateCertificate | None]:
    """The ``[tls]`` files, read and checked.

    That is what clients handshake with, the authorities the servers'
    certificates are verified against, and the certificate presented to
    the servers, if any; ``fqdn`` ``None`` checks no name.

    :raises TLSSetupError: naming every file that cannot be read or used,
        not the first only.
    """
    problems: list[tuple[str, str, str]] = []

    def attempt(read: Callable[[], _R]) -> _R | None:
        try:
            return read()
        except TLSSetupError as e:
            problems.extend(e.problems)
            return None

    trust, client = settings.trust, settings.client_certificate
    accepting = attempt(lambda: _accepting(settings.certificate or "", fqdn))
    authorities = attempt(lambda: _certificates("trust", trust)) if trust else None
    own = attempt(lambda: _private("client_certificate", client)) if client else None
    if problems or accepting is None:  # None only with a problem
        raise TLSSetupError(problems)
    presented = None if own is None else own[0]
    if authorities is None:
        return accepting, platformTrust(), presented
    return accepting, trustRootFromCertificates(authorities), presented


#: What each ``[tls]`` file must hold, said when it cannot be read.
_WANTED = {
    "certificate": "the pool's private key and certificate",
    "trust": "the authorities that sign the servers' certificates",
    "client_certificate": "a private key and certificate to present to servers",
}


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        why = f"cannot read: {e.strerror}; give a PEM file of {_WANTED[key]}"
        raise TLSSetupError([(key, path, why)]) from None


def _certificates(key: str, path: str) -> list[Certificate]:
    """Every certificate of a PEM file, in order."""
    pem = _read(key, path)
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSSetupError([(key, path, "holds no PEM certificate")]) from None
    return [Certificate(X509.from_cryptography(c)) for c in found]


def _private(key: str, path: str) -> tuple[PrivateCertificate, list[Certificate]]:
    """A PEM file's private key with its first certificate, and the chain after."""
    certificates = _certificates(key, path)
    try:
        own = PrivateCertificate.loadPEM(_read(key, path))
    except VerifyError:
        why = "its private key is not its certificate's"
        raise TLSSetupError([(key, path, why)]) from None
    except Exception:  # pyOpenSSL raises its own Error, or ValueError
        why = (
            "holds no usable PEM private key (it must hold the key and the "
            "certificate, unencrypted)"
        )
        raise TLSSetupError([(key, path, why)]) from None
    return own, certificates[1:]


def _pattern(pattern: object) -> str:
    """A certificate's name as it is written: ``pool.contoso.com``, ``10.0.0.1``."""
    text = getattr(pattern, "pattern", pattern)
    return text.decode() if isinstance(text, bytes) else str(text)


def _accepting(path: str, fqdn: str | None) -> CertificateOptions:
    """The pool's side of a client's handshake; ``fqdn`` ``None`` checks no name."""
    own, chain = _private("certificate", path)
    certificate = own.original.to_cryptography()
    try:
        if fqdn is not None:
            verify_certificate_hostname(certificate, fqdn)
    except (VerificationError, CertificateError):
        names = ", ".join(map(_pattern, extract_patterns(certificate))) or "none"
        why = (
            f"is not issued to the pool fqdn {fqdn} (its names: {names}); "
            "clients would refuse it"
        )
        raise TLSSetupError([("certificate", path, why)]) from None
    return CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        extraCertChain=[c.original for c in chain],
        raiseMinimumTo=MINIMUM_VERSION,
    )
