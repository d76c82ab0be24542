#!/usr/bin/env python3
"""Fake AWS for regcred's tests: moto's server, wrapped.

Port P (AWS_ENDPOINT_URL): everything goes to moto (ECR, STS, ...), except that
  - ECR GetAuthorizationToken answers carry expiresAt = now + TTL (moto says 2015-01-01);
  - /_regcred/... is our control API (call counters, per-key TTL and fault injection).
Port Q (AWS_ENDPOINT_URL_ECR_PUBLIC): ECR Public GetAuthorizationToken, which moto lacks.

Calls are counted per AWS access key id (from the SigV4 Authorization header) and
operation, so parallel tests that each sign with their own random key id see only their
own calls. See testenv/README.md for the control API.

    python fake_aws.py [--host 127.0.0.1] [--port 25000] [--public-port 25001] [--log FILE]
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

ECR_TOKEN = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
PUBLIC_TOKEN = "SpencerFrontendService.GetAuthorizationToken"
# Default moto account, and the password moto puts in its ECR token (moto/ecr/responses.py).
ACCOUNT = os.environ.get("MOTO_ACCOUNT_ID", "123456789012")
PUBLIC_PASSWORD = "ecr-public-auth-token"  # ours; no registry checks it
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
            expires = expiry(self.state, key)
            for data in answer.get("authorizationData", []):
                data.pop("expiresAt", None)
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
        data = {"authorizationToken": base64.b64encode(f"AWS:{PUBLIC_PASSWORD}".encode()).decode()}
        expires = expiry(self.state, key)
        if expires is not None:
            data["expiresAt"] = expires
        return respond(start_response, "200 OK", {"authorizationData": data}, "application/x-amz-json-1.1")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=25000, help="moto + control API")
    p.add_argument("--public-port", type=int, default=25001, help="ECR Public")
    p.add_argument("--log", help="log file (default: stderr)")
    args = p.parse_args()

    logging.basicConfig(filename=args.log, level=logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    # moto reads MOTO_PORT to build URLs it hands out; keep it pointing at us.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    state = State(parse_ttl(os.environ.get("REGCRED_TEST_TOKEN_TTL", "43200")))
    servers = [
        make_server(args.host, args.port, MainApp(state), threaded=True, request_handler=MotoRequestHandler),
        make_server(args.host, args.public_port, PublicApp(state), threaded=True),
    ]
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
