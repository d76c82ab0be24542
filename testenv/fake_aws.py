#!/usr/bin/env python3
"""Fake AWS for regcred's tests: moto's server, wrapped.

Port P (AWS_ENDPOINT_URL): everything goes to moto (ECR, STS, ...), except that
  - ECR GetAuthorizationToken answers carry expiresAt = now + TTL (moto says 2015-01-01)
    and a fresh password of their own, valid until then (moto's is fixed forever);
  - /_regcred/... is our control API (call counters, per-key TTL and fault injection).
Port Q (AWS_ENDPOINT_URL_ECR_PUBLIC): ECR Public GetAuthorizationToken, which moto lacks.
--front PORT=ACCOUNT: the registry's door for that account (registry_front.py), which
  admits only a password this process issued for that account, until it expires.

Calls are counted per AWS access key id (from the SigV4 Authorization header) and
operation, so parallel tests that each sign with their own random key id see only their
own calls. See testenv/README.md for the control API.

    python fake_aws.py [--host 127.0.0.1] [--port 25000] [--public-port 25001] [--log FILE]
        [--front PORT=ACCOUNT ... --backend HOST:PORT --backend-auth-file F --tls-cert F
         --tls-key F --ca F]
"""

import argparse
import base64
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from registry_front import Front, Tokens

ECR_TOKEN = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
PUBLIC_TOKEN = "SpencerFrontendService.GetAuthorizationToken"
# Default moto account. moto's ECR token is base64("AWS:<account>-auth-token") for the
# caller's account (moto/ecr/responses.py); we keep the account and replace the password.
ACCOUNT = os.environ.get("MOTO_ACCOUNT_ID", "123456789012")
MOTO_PASSWORD = re.compile(r"^AWS:(\d{12})-auth-token$")
PUBLIC_ACCOUNT = "public"  # the account name of ECR Public tokens in the token table
ANONYMOUS = "-"  # key under which unsigned calls (e.g. AssumeRoleWithWebIdentity) count

log = logging.getLogger("fake_aws")


def parse_ttl(value):
    """Seconds from 43200, "43200", "30s", "10m", "12h" or "1d"; may be negative."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not m:
        raise ValueError(f"bad TTL {value!r}: want seconds or a number with s/m/h/d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class State:
    """Counters and injected behaviour, shared by both ports."""

    def __init__(self, ttl):
        self.lock = threading.Lock()
        self.ttl = ttl  # default token lifetime, seconds
        self.tokens = Tokens()  # every registry password issued, shared with the fronts
        self.calls = defaultdict(Counter)  # key id -> Counter("service:Operation")
        self.keys = {}  # key id -> {"ttl": s, "fail": bool|str, "delay": s, "omitExpiry": bool}

    def count(self, key, op):
        with self.lock:
            self.calls[key][op] += 1

    def counts(self, key=None):
        with self.lock:
            if key is not None:
                return dict(self.calls.get(key, {}))
            return dict(sum(self.calls.values(), Counter()))

    def key_config(self, key):
        with self.lock:
            return dict(self.keys.get(key, {}))

    def token_ttl(self, key):
        return self.key_config(key).get("ttl", self.ttl)


def read_body(environ):
    """Reads the request body and puts it back, so moto can read it again."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def identify(environ, body):
    """(access key id, "service:Operation") of an AWS request."""
    key, service = ANONYMOUS, None
    m = re.search(r"Credential=([^/,\s]+)/[^/]+/[^/]+/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
    if m:
        key, service = m.group(1), m.group(2)
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:  # JSON protocol: Prefix.Operation
        op = target.rsplit(".", 1)[-1]
        if service is None:
            service = {"AmazonEC2ContainerRegistry_V20150921": "ecr",
                       "SpencerFrontendService": "ecr-public"}.get(target.split(".")[0], "unknown")
    else:  # query protocol (STS): Action in the form body or the query string
        params = parse_qs(body.decode("utf-8", "replace")) if body else {}
        params = params or parse_qs(environ.get("QUERY_STRING", ""))
        op = params.get("Action", ["unknown"])[0]
        if service is None:
            service = "sts" if op.startswith(("AssumeRole", "GetCallerIdentity")) else "unknown"
    return key, f"{service}:{op}"


def respond(start_response, status, obj, content_type="application/json"):
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def injected(state, key, start_response):
    """The injected delay and failure for a token call with `key`, or None to go on."""
    cfg = state.key_config(key)
    if cfg.get("delay"):
        time.sleep(float(cfg["delay"]))
    fail = cfg.get("fail")
    if not fail:
        return None
    # true: a 500 ServerException; a string: that error type as a 400 (ThrottlingException, ...)
    kind = "ServerException" if fail is True else str(fail)
    status = "500 Internal Server Error" if kind == "ServerException" else "400 Bad Request"
    return respond(start_response, status, {"__type": kind, "message": "injected failure"},
                   "application/x-amz-json-1.1")


def expiry(state, key):
    """The expiresAt for a token fetched now with `key`, or None to omit it."""
    if state.key_config(key).get("omitExpiry"):
        return None
    return round(time.time() + state.token_ttl(key), 3)


def fresh_token(state, key, account):
    """(authorizationToken, expiresAt or None) for a new password of `account`. A token
    whose answer omits expiresAt still expires, after the key's TTL."""
    shown = expiry(state, key)
    valid_until = shown if shown is not None else time.time() + state.token_ttl(key)
    password = state.tokens.issue(account, valid_until, key)
    return base64.b64encode(f"AWS:{password}".encode()).decode(), shown


class MainApp:
    """Port P: control API, ECR token rewriting, everything else straight to moto."""

    def __init__(self, state):
        self.state = state
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_regcred/"):
            return self.control(environ, start_response, path[len("/_regcred/"):])
        body = read_body(environ)
        key, op = identify(environ, body)
        self.state.count(key, op)
        if environ.get("HTTP_X_AMZ_TARGET") == ECR_TOKEN:
            return self.ecr_token(environ, start_response, key)
        return self.moto(environ, start_response)

    def ecr_token(self, environ, start_response, key):
        error = injected(self.state, key, start_response)
        if error is not None:
            return error
        captured = {}

        def capture(status, headers, exc_info=None):
            captured.update(status=status, headers=headers)

        chunks = self.moto(environ, capture)
        body = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        if captured["status"].startswith("200"):
            answer = json.loads(body)
            for data in answer.get("authorizationData", []):
                moto_login = base64.b64decode(data["authorizationToken"]).decode()
                m = MOTO_PASSWORD.match(moto_login)
                if not m:
                    raise ValueError("moto's ECR token is not AWS:<account>-auth-token any more")
                data.pop("expiresAt", None)
                data["authorizationToken"], expires = fresh_token(self.state, key, m.group(1))
                if expires is not None:
                    data["expiresAt"] = expires
            body = json.dumps(answer).encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], headers + [("Content-Length", str(len(body)))])
        return [body]

    def control(self, environ, start_response, route):
        method = environ["REQUEST_METHOD"]
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        try:
            if route == "calls" and method == "GET":
                return respond(start_response, "200 OK", self.state.counts(query.get("key")))
            if route == "calls" and method == "DELETE":
                with self.state.lock:
                    if "key" in query:
                        self.state.calls.pop(query["key"], None)
                    else:
                        self.state.calls.clear()
                return respond(start_response, "200 OK", {})
            if route == "ttl" and method == "GET":
                return respond(start_response, "200 OK", {"ttl": self.state.ttl})
            if route == "ttl" and method == "PUT":
                self.state.ttl = parse_ttl(json.loads(read_body(environ))["ttl"])
                return respond(start_response, "200 OK", {"ttl": self.state.ttl})
            if route.startswith("keys/") and len(route) > len("keys/"):
                key = route[len("keys/"):]
                if method == "PUT":
                    cfg = json.loads(read_body(environ) or b"{}")
                    unknown = set(cfg) - {"ttl", "fail", "delay", "omitExpiry"}
                    if unknown:
                        raise ValueError(f"unknown fields {sorted(unknown)}")
                    if "ttl" in cfg:
                        cfg["ttl"] = parse_ttl(cfg["ttl"])
                    with self.state.lock:
                        self.state.keys[key] = cfg
                    return respond(start_response, "200 OK", cfg)
                if method == "GET":
                    return respond(start_response, "200 OK", self.state.key_config(key))
                if method == "DELETE":
                    with self.state.lock:
                        self.state.keys.pop(key, None)
                    return respond(start_response, "200 OK", {})
            if route == "registry-tokens" and method == "POST":
                # A password as a token call would give, without the call (tests, demo).
                req = json.loads(read_body(environ) or b"{}")
                ttl = parse_ttl(req.get("ttl", self.state.ttl))
                expires = round(time.time() + ttl, 3)
                password = self.state.tokens.issue(str(req.get("account", ACCOUNT)), expires, ANONYMOUS)
                return respond(start_response, "200 OK", {"password": password, "expiresAt": expires})
            if route == "registry-tokens/lookup" and method == "POST":
                found = self.state.tokens.lookup(json.loads(read_body(environ))["password"])
                if found is None:
                    return respond(start_response, "404 Not Found", {"error": "never issued"})
                found["valid"] = found["expiresAt"] > time.time()
                return respond(start_response, "200 OK", found)
            if route == "health":
                return respond(start_response, "200 OK", {"ok": True})
        except (ValueError, KeyError, TypeError) as e:  # bad JSON or bad TTL
            return respond(start_response, "400 Bad Request", {"error": str(e)})
        return respond(start_response, "404 Not Found", {"error": f"no route {method} /_regcred/{route}"})


class PublicApp:
    """Port Q: ECR Public's GetAuthorizationToken (the only ECR Public call regcred makes)."""

    def __init__(self, state):
        self.state = state

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/_regcred/health":  # not counted
            return respond(start_response, "200 OK", {"ok": True})
        body = read_body(environ)
        key, op = identify(environ, body)
        self.state.count(key, op)
        if environ.get("HTTP_X_AMZ_TARGET") != PUBLIC_TOKEN:
            return respond(start_response, "400 Bad Request",
                           {"__type": "UnknownOperationException", "message": f"{op} is not served here"},
                           "application/x-amz-json-1.1")
        error = injected(self.state, key, start_response)
        if error is not None:
            return error
        token, expires = fresh_token(self.state, key, PUBLIC_ACCOUNT)
        data = {"authorizationToken": token}
        if expires is not None:
            data["expiresAt"] = expires
        return respond(start_response, "200 OK", {"authorizationData": data}, "application/x-amz-json-1.1")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=25000, help="moto + control API")
    p.add_argument("--public-port", type=int, default=25001, help="ECR Public")
    p.add_argument("--log", help="log file (default: stderr)")
    p.add_argument("--front", action="append", default=[], metavar="PORT=ACCOUNT",
                   help="serve the registry's door for ACCOUNT on PORT (TLS)")
    p.add_argument("--backend", help="the docker-registry behind the fronts, HOST:PORT (TLS)")
    p.add_argument("--backend-auth-file", help="file holding USER:PASSWORD for the backend")
    p.add_argument("--tls-cert", help="the fronts' serving certificate")
    p.add_argument("--tls-key", help="the fronts' serving key")
    p.add_argument("--ca", help="CA that signed the backend's certificate")
    args = p.parse_args()
    if args.front and not all([args.backend, args.backend_auth_file, args.tls_cert, args.tls_key, args.ca]):
        p.error("--front needs --backend, --backend-auth-file, --tls-cert, --tls-key and --ca")

    logging.basicConfig(filename=args.log, level=logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    # moto reads MOTO_PORT to build URLs it hands out; keep it pointing at us.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    state = State(parse_ttl(os.environ.get("REGCRED_TEST_TOKEN_TTL", "43200")))
    servers = [
        make_server(args.host, args.port, MainApp(state), threaded=True, request_handler=MotoRequestHandler),
        make_server(args.host, args.public_port, PublicApp(state), threaded=True),
    ]
    if args.front:
        with open(args.backend_auth_file) as f:
            backend_auth = f.read().strip()
        for spec in args.front:
            port, _, account = spec.partition("=")
            app = Front(state.tokens, account, args.backend, backend_auth, args.ca)
            servers.append(make_server(args.host, int(port), app, threaded=True,
                                       ssl_context=(args.tls_cert, args.tls_key)))
            log.info("registry front for account %s on %s:%s", account, args.host, port)
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    log.info("fake AWS on %s:%d (ECR Public on :%d), token TTL %ss",
             args.host, args.port, args.public_port, state.ttl)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for s in servers:
        s.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
