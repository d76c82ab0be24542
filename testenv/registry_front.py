"""The registry's door, as ECR keeps it: tokens that really expire.

Each ECR (and ECR Public) GetAuthorizationToken answer of the fake AWS carries a fresh
password, recorded in `Tokens` with the account it was minted for and its expiry. A
`Front` listens where clients expect the registry (TLS, one port per AWS account) and
checks HTTP Basic credentials against that table, as ECR does:

  - no credentials, or a password it never issued, or one issued for another account:
    401 with a Basic challenge;
  - a password past its expiry: 403 `denied: Your authorization token has expired.
    Reauthenticate and try again.` (ECR's words);
  - a valid one: the request goes on to Debian's docker-registry behind it (on its own
    port, with a credential only the front knows), answer streamed back unchanged.

The registry itself stays the real thing: manifests, blobs, uploads and errors are
docker-registry's own.
"""

import base64
import hashlib
import http.client
import logging
import secrets
import ssl
import threading
import time

log = logging.getLogger("registry_front")

EXPIRED = "Your authorization token has expired. Reauthenticate and try again."
# Request headers not passed on (hop-by-hop, or replaced by ours).
DROP_REQUEST = {"authorization", "connection", "keep-alive", "proxy-authorization", "te",
                "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "trailer", "upgrade"}
KEEP_EXPIRED = 3600  # seconds an expired password is still recognised (and answered 403)


def fingerprint(password):
    """A short, one-way name for a password: safe to log."""
    return hashlib.sha256(password.encode()).hexdigest()[:12]


class Tokens:
    """Every registry password the fake AWS issued: account, expiry, who asked."""

    def __init__(self):
        self.lock = threading.Lock()
        self.issued = {}  # password -> {"account", "expiresAt", "key"}

    def issue(self, account, expires_at, key):
        """A fresh password for `account`, valid until `expires_at` (epoch seconds)."""
        # Real ECR passwords are long base64 blobs; ours are long enough to look alike.
        password = base64.b64encode(secrets.token_bytes(96)).decode()
        with self.lock:
            now = time.time()
            for old in [p for p, t in self.issued.items() if t["expiresAt"] < now - KEEP_EXPIRED]:
                del self.issued[old]
            self.issued[password] = {"account": account, "expiresAt": expires_at, "key": key}
        log.info("issued token %s for account %s, expires in %.0fs (key %s)",
                 fingerprint(password), account, expires_at - time.time(), key)
        return password

    def lookup(self, password):
        with self.lock:
            found = self.issued.get(password)
            return dict(found) if found else None


def basic_credentials(environ):
    """(user, password) from an HTTP Basic Authorization header, or None."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class Front:
    """WSGI app: the door for one account in front of the shared docker-registry."""

    def __init__(self, tokens, account, backend, backend_auth, ca_file):
        self.tokens = tokens
        self.account = account
        self.backend_host, port = backend.rsplit(":", 1)
        self.backend_port = int(port)
        self.backend_auth = "Basic " + base64.b64encode(backend_auth.encode()).decode()
        self.tls = ssl.create_default_context(cafile=ca_file)

    def __call__(self, environ, start_response):
        verdict = self.admit(environ)
        if verdict is not None:
            status, code, message = verdict
            log.info("%s %s %s -> %s", self.account, environ["REQUEST_METHOD"],
                     environ.get("PATH_INFO", ""), status)
            return self.refuse(start_response, status, code, message, environ)
        return self.forward(environ, start_response)

    def admit(self, environ):
        """None to let the request in, or (status, error code, message)."""
        creds = basic_credentials(environ)
        if creds is None:
            return ("401 Unauthorized", "UNAUTHORIZED", "authentication required")
        user, password = creds
        token = self.tokens.lookup(password) if user == "AWS" else None
        if token is None or token["account"] != self.account:
            return ("401 Unauthorized", "UNAUTHORIZED", "Not Authorized")
        if token["expiresAt"] <= time.time():
            return ("403 Forbidden", "DENIED", EXPIRED)
        return None

    def refuse(self, start_response, status, code, message, environ):
        body = ('{"errors":[{"code":"%s","message":"%s","detail":null}]}' % (code, message)).encode()
        host = environ.get("HTTP_HOST", "registry")
        headers = [("Content-Type", "application/json; charset=utf-8"),
                   ("Content-Length", str(len(body))),
                   ("Docker-Distribution-Api-Version", "registry/2.0")]
        if status.startswith("401"):
            headers.append(("WWW-Authenticate", f'Basic realm="https://{host}/",service="ecr.amazonaws.com"'))
        start_response(status, headers)
        return [body]

    def forward(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "/")
        query = environ.get("QUERY_STRING", "")
        target = path + (f"?{query}" if query else "")
        headers = {}
        for k, v in environ.items():
            if k.startswith("HTTP_"):
                name = k[5:].replace("_", "-").lower()
                if name not in DROP_REQUEST:
                    headers[name] = v
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        # docker-registry builds Location URLs from Host and X-Forwarded-Proto: keep ours.
        headers["host"] = environ.get("HTTP_HOST", f"{self.backend_host}:{self.backend_port}")
        headers["x-forwarded-proto"] = "https"
        headers["authorization"] = self.backend_auth
        body = self.request_body(environ)
        headers["content-length"] = str(len(body))
        conn = http.client.HTTPSConnection(self.backend_host, self.backend_port,
                                           context=self.tls, timeout=60)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            log.warning("backend %s %s failed: %s", method, path, e)
            return self.refuse(start_response, "502 Bad Gateway", "UNAVAILABLE", "registry unavailable", environ)
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in DROP_RESPONSE]
        start_response(f"{resp.status} {resp.reason}", out)
        log.info("%s %s %s -> %d", self.account, method, path, resp.status)

        def stream():
            try:
                while True:
                    chunk = resp.read(65536)
                    if not chunk:
                        break
                    yield chunk
            finally:
                conn.close()

        return stream()

    @staticmethod
    def request_body(environ):
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        if length:
            return stream.read(int(length))
        if environ.get("wsgi.input_terminated"):  # chunked upload, already de-chunked
            return stream.read()
        return b""
