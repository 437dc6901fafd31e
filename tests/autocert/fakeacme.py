"""A scripted stand-in for AcmeSession (same methods), and a local CA that signs CSRs."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from autocert.acmeclient import Polled, problem_to_error


class LocalCA:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake ACME CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(1)
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, csr_pem: bytes, not_before: float, lifetime: float) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        start = datetime.datetime.fromtimestamp(not_before, datetime.timezone.utc)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.name)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + datetime.timedelta(seconds=lifetime))
                .add_extension(san, critical=True)
                .sign(self.key, hashes.SHA256()))
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, self.cert))


class FakeAcme:
    """Holds the script and the record shared by every session the manager creates.

    ``failures`` is a list consumed one per order: None for success, an exception to raise
    from new_order, or a messages.Error that the authorization then carries as invalid.
    """

    def __init__(self, clock: Callable[[], float], lifetime: float = 3 * 3600) -> None:
        self.ca = LocalCA()
        self.clock = clock
        self.lifetime = lifetime
        self.failures: list[Any] = []
        self.order_times: list[float] = []
        self.answered: list[str] = []
        self.connect_hook: Callable[[], None] | None = None

    def factory(self, directory_url: str, key_pem: bytes, email: str | None, **kw: Any) -> "FakeSession":
        return FakeSession(self, kw["hostname"], kw["challenge"])


class FakeSession:
    def __init__(self, acme: FakeAcme, hostname: str, challenge: str) -> None:
        self.acme, self.hostname, self.challenge = acme, hostname, challenge
        self.csr: bytes | None = None
        self.fail: Any = None

    def connect(self) -> None:
        if self.acme.connect_hook:
            self.acme.connect_hook()

    def key_authorization(self, token: str) -> str:
        return token + ".thumb"

    def new_order(self, csr_pem: bytes) -> messages.OrderResource:
        self.acme.order_times.append(self.acme.clock())
        self.fail = self.acme.failures.pop(0) if self.acme.failures else None
        if isinstance(self.fail, Exception) and not isinstance(self.fail, messages.Error):
            raise self.fail
        self.csr = csr_pem
        authz = messages.Authorization.from_json({
            "identifier": {"type": "dns", "value": self.hostname},
            "status": "pending",
            "challenges": [
                {"type": "tls-alpn-01", "url": "https://ca/chall/1", "token": "alpnTOKEN0123456789abcde", "status": "pending"},
                {"type": "http-01", "url": "https://ca/chall/2", "token": "httpTOKEN0123456789abcde", "status": "pending"},
            ],
        })
        order = messages.Order.from_json({"status": "pending", "identifiers": [
            {"type": "dns", "value": self.hostname}], "authorizations": ["https://ca/authz/1"],
            "finalize": "https://ca/finalize/1"})
        return messages.OrderResource(body=order, uri="https://ca/order/1",
                                      authorizations=[messages.AuthorizationResource(
                                          body=authz, uri="https://ca/authz/1")], csr_pem=csr_pem)

    def answer_challenge(self, challb: messages.ChallengeBody) -> None:
        self.acme.answered.append(challb.chall.to_partial_json()["type"])

    def fetch_authorization(self, url: str) -> Polled:
        chall = {"type": self.challenge, "url": "https://ca/chall/1", "token": "alpnTOKEN0123456789abcde",
                 "status": "valid"}
        status = "valid"
        if isinstance(self.fail, messages.Error):
            status = chall["status"] = "invalid"
            chall["error"] = self.fail.to_partial_json()
        return Polled(messages.Authorization.from_json({
            "identifier": {"type": "dns", "value": self.hostname}, "status": status,
            "challenges": [chall]}), None)

    def finalize(self, orderr: messages.OrderResource) -> messages.Order:
        return messages.Order.from_json({"status": "processing", "identifiers": [],
                                         "finalize": "https://ca/finalize/1"})

    def fetch_order(self, url: str) -> Polled:
        return Polled(messages.Order.from_json({
            "status": "valid", "identifiers": [], "finalize": "https://ca/finalize/1",
            "certificate": "https://ca/cert/1"}), self.acme.clock() + 2)

    def download_certificate(self, url: str) -> bytes:
        assert self.csr is not None
        return self.acme.ca.issue(self.csr, self.acme.clock(), self.acme.lifetime)

    def challenge_error(self, problem: messages.Error) -> Exception:
        return problem_to_error(problem, hostname=self.hostname, challenge=self.challenge,
                                status=None, retry_after=None, during_validation=True)
