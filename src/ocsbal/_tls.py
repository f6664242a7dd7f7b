"""TLS termination on ``sips`` ports: the pool's certificates, loaded and checked.

With ``[tls] mode = terminate`` clients handshake with ocsbal, which presents
the pool's certificate, and ocsbal opens TLS of its own to the server it
picks, verifying the server's certificate against ``trust`` and the
server's ``tls_name`` with service_identity.  Everything here is built
once, when the pool starts, so a bad file stops the start rather than a
connection; the contexts are then shared by every connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns, verify_certificate_hostname
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
    """A ``[tls]`` file cannot be used; the message names the key, file and why."""


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


class TLSContexts:
    """The TLS both sides of a terminated ``sips`` connection speak.

    :param settings: the pool's ``[tls]`` section, with ``mode = terminate``.
    :param fqdn: the pool FQDN, which the pool's certificate must carry.
    :raises TLSSetupError: if a file cannot be read or used.

    :ivar accepting: what clients handshake with: the pool's key and
        certificate chain, TLS 1.2 or later.
    """

    def __init__(self, settings: TLSSettings, fqdn: str) -> None:
        self.accepting = _accepting(settings.certificate or "", fqdn)
        self._trust: IOpenSSLTrustRoot = platformTrust()
        if settings.trust is not None:
            authorities = _certificates("trust", settings.trust)
            self._trust = trustRootFromCertificates(authorities)
        self._own: PrivateCertificate | None = None
        if settings.client_certificate is not None:
            self._own = _private("client_certificate", settings.client_certificate)[0]
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


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSSetupError(
            f"[tls] {key} = {path}: cannot read: {e.strerror}"
        ) from None


def _certificates(key: str, path: str) -> list[Certificate]:
    """Every certificate of a PEM file, in order."""
    pem = _read(key, path)
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSSetupError(f"[tls] {key} = {path}: holds no PEM certificate") from None
    return [Certificate(X509.from_cryptography(c)) for c in found]


def _private(key: str, path: str) -> tuple[PrivateCertificate, list[Certificate]]:
    """A PEM file's private key with its first certificate, and the chain after."""
    certificates = _certificates(key, path)
    try:
        own = PrivateCertificate.loadPEM(_read(key, path))
    except VerifyError:
        raise TLSSetupError(
            f"[tls] {key} = {path}: its private key is not its certificate's"
        ) from None
    except Exception:  # pyOpenSSL raises its own Error, or ValueError
        raise TLSSetupError(
            f"[tls] {key} = {path}: holds no usable PEM private key "
            "(it must hold the key and the certificate, unencrypted)"
        ) from None
    return own, certificates[1:]


def _pattern(pattern: object) -> str:
    """A certificate's name as it is written: ``pool.contoso.com``, ``10.0.0.1``."""
    text = getattr(pattern, "pattern", pattern)
    return text.decode() if isinstance(text, bytes) else str(text)


def _accepting(path: str, fqdn: str) -> CertificateOptions:
    own, chain = _private("certificate", path)
    certificate = own.original.to_cryptography()
    try:
        verify_certificate_hostname(certificate, fqdn)
    except (VerificationError, CertificateError):
        names = ", ".join(map(_pattern, extract_patterns(certificate))) or "none"
        raise TLSSetupError(
            f"[tls] certificate = {path}: is not issued to the pool fqdn {fqdn} "
            f"(its names: {names}); clients would refuse it"
        ) from None
    return CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        extraCertChain=[c.original for c in chain],
        raiseMinimumTo=MINIMUM_VERSION,
    )
