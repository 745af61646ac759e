"""Each service's metrics listener: /metrics, /livez and /readyz on MAILHOST_METRICS_PORT.

A plain ``ThreadingHTTPServer`` in a daemon thread of the process that owns the service: the
supervisor for ``--workers N`` (it reads every worker's multiprocess files, so the figures are
summed and survive any one worker), the one process otherwise. It is bound to
``MAILHOST_METRICS_HOST`` (loopback by default) and carries no token: who may reach that
address is the access control, as for node_exporter.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app import health, metrics

log = logging.getLogger("mailhost.metrics")


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """``start`` binds and serves in a thread; ``port`` is the bound port; ``stop`` closes."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        session_factory: sessionmaker[Session],
        maildir_root: Path,
        queue: bool,
        scanners: Sequence[health.ScannerCheck] = (),
    ) -> None:
        self._host, self._port = host, port
        self._scanners = tuple(scanners)
        self._factory = session_factory
        self._maildir_root = maildir_root
        self._exposition = metrics.Exposition(session_factory=session_factory if queue else None)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        body = metrics.render(owner._exposition)
                    except Exception:
                        log.exception("a metrics scrape failed")
                        self._send(500, b"scrape failed\n", "text/plain; charset=utf-8")
                        return
                    self._send(200, body, metrics.CONTENT_TYPE)
                elif path == "/livez":
                    self._json(200, {"status": "ok"})
                elif path == "/readyz":
                    report = health.readiness(
                        session_factory=owner._factory,
                        maildir_root=owner._maildir_root,
                        scanners=owner._scanners,
                    )
                    self._json(200 if report.ok else 503, report.as_json())
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _json(self, status: int, document: dict[str, object]) -> None:
                self._send(status, json.dumps(document).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("metrics %s", format % args)

        server_class = _IPv6Server if ":" in self._host else ThreadingHTTPServer
        httpd = server_class((self._host, self._port), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="mailhost-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
