"""A fault-injecting HTTP proxy in front of the S3 server, on 127.0.0.1, for the S3 fault tests.

Requests pass through unchanged (the Host header too, so SigV4 signatures still verify);
a ``FaultPlan`` decides per request whether to answer 500, 503 SlowDown, cut the body
off mid-transfer, stall past the client's read timeout, or forward the request and then
drop the response (the server acted, the client never heard). Not among the transient
faults: ``ignore_range`` answers a ranged GET as a server that ignores Range would, with
the plan's ``whole_body``, chunked (no Content-Length, no Content-Range).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("status_500", "slowdown_503", "reset_mid_body", "stall_headers", "drop_response")

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


@dataclass
class FaultPlan:
    """``choose(method, path, headers)`` returns a fault name or None for each request."""

    choose: Callable[[str, str, dict[str, str]], str | None]
    stall_seconds: float = 3.0
    whole_body: bytes = b""  # what ``ignore_range`` answers
    injected: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def every_nth(n: int, faults: tuple[str, ...], applies: Callable[[str, str, dict[str, str]], bool]):
    """Inject ``faults`` in turn on every ``n``-th request that ``applies``."""
    seen = Counter[str]()

    def choose(method: str, path: str, headers: dict[str, str]) -> str | None:
        if not applies(method, path, headers):
            return None
        seen["n"] += 1
        if seen["n"] % n:
            return None
        return faults[(seen["n"] // n - 1) % len(faults)]

    return choose


class FaultProxy:
    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.plan = plan
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def _handle(self) -> None:
                proxy.forward(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {key: value for key, value in handler.headers.items()}
        length = int(headers.get("Content-Length", "0") or 0)
        body = handler.rfile.read(length) if length else b""
        with self.plan.lock:
            self.plan.requests[handler.command] += 1
            fault = self.plan.choose(handler.command, handler.path, headers)
            if fault:
                self.plan.injected[fault] += 1
        if fault == "status_500":
            return self._reply(handler, 500, INTERNAL_BODY)
        if fault == "slowdown_503":
            return self._reply(handler, 503, SLOWDOWN_BODY)
        if fault == "stall_headers":
            time.sleep(self.plan.stall_seconds)
            return self._close(handler)
        upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            status, reply_headers = response.status, response.getheaders()
        finally:
            upstream.close()
        if fault == "drop_response":
            return self._close(handler)
        if fault == "ignore_range":
            return self._reply_chunked(handler, 200, self.plan.whole_body)
        handler.send_response(status)
        for key, value in reply_headers:
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(key, value)
        # A HEAD's Content-Length is the object's size, not the length of an empty body.
        upstream_length = dict((k.lower(), v) for k, v in reply_headers).get("content-length")
        length = upstream_length if handler.command == "HEAD" else str(len(payload))
        handler.send_header("Content-Length", length or "0")
        handler.end_headers()
        if fault == "reset_mid_body" and handler.command == "GET" and len(payload) > 1:
            handler.wfile.write(payload[: len(payload) // 2])
            handler.wfile.flush()
            return self._close(handler)
        handler.wfile.write(payload)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    @staticmethod
    def _reply_chunked(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    @staticmethod
    def _close(handler: BaseHTTPRequestHandler) -> None:
        """Cut the connection with a TCP reset, as a broken network would."""
        handler.close_connection = True
        try:
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            handler.connection.close()
        except OSError:
            pass
