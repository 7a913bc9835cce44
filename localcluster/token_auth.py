"""A registry token server: the Bearer flow Docker Hub, GHCR and Harbor use, on a loopback port.

With ``auth: token`` the real registry answers 401 with ``WWW-Authenticate: Bearer realm=...,
service=..., scope=...``; a client asks the realm for a token (with Basic credentials, or
anonymously), and presents it. The registry checks the token's RS256 signature against the
certificate it was given, its issuer, audience, lifetime and the access it grants. This server
issues such tokens for the users of an htpasswd-like map, so the tests exercise a client's
whole challenge → token → retry path against the unmodified registry. It counts the tokens it
issued, for tests of token caching. An identity token (an OAuth2 refresh token, what ``docker
login`` stores for some registries) is exchanged by POST, as containerd does.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from localcluster._lifecycle import Service

SERVICE = "localcluster-registry"
ISSUER = "localcluster-token"
LIFETIME = 300  # seconds a token is valid


class TokenServer(Service):
    """Issues pull/push tokens to ``users`` (name → password); anonymous requests get none."""

    def __init__(
        self, workdir: Path, users: dict[str, str], refresh_tokens: dict[str, str] | None = None
    ) -> None:
        """``refresh_tokens``: identity token → the user it stands for."""
        self.users = dict(users)
        self.refresh_tokens = dict(refresh_tokens or {})
        self.cert_path = Path(workdir).absolute() / "token-cert.pem"
        self.issued = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._cert = _self_signed(self._key)
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def realm(self) -> str:
        if self._server is None:
            raise RuntimeError("token server not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def registry_auth(self) -> dict[str, Any]:
        """The ``auth`` section of the registry's config that trusts this server."""
        return {
            "token": {
                "realm": self.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.cert_path),
            }
        }

    def start(self) -> TokenServer:
        self.cert_path.parent.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server = server
        threading.Thread(target=server.serve_forever, name="token-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def token_for(self, user: str | None, scope: str) -> str | None:
        """A signed token granting ``user`` ``scope``; None for no (valid) user."""
        if user is None:
            return None
        now = int(time.time())
        access = []
        if scope:
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "exp": now + LIFETIME,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        with self._lock:
            self.issued += 1
        return self._sign(claims)

    def _sign(self, claims: dict[str, Any]) -> str:
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


def _handler(tokens: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            user = _basic_user(self.headers.get("Authorization", ""), tokens.users)
            self._answer(tokens.token_for(user, query.get("scope", [""])[0]))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            refresh = form.get("refresh_token", [""])[0]
            if form.get("grant_type") != ["refresh_token"]:
                refresh = ""
            user = tokens.refresh_tokens.get(refresh)
            self._answer(tokens.token_for(user, form.get("scope", [""])[0]))

        def _answer(self, token: str | None) -> None:
            if token is None:
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"token": token, "expires_in": LIFETIME}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _basic_user(authorization: str, users: dict[str, str]) -> str | None:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return None
    return user if users.get(user) == password else None


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
