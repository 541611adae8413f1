"""A stand-in for the INFER FORGE app: serves the runbook's /health JSON on loopback.

The real app (FastAPI) is not part of this repository; this server answers the
way the runbook documents, and can be told to be unhealthy, broken or slow.
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTHY = {
    "status": "healthy",
    "services": [
        {"healthy": True, "service": "database", "latency_ms": 2.3},
        {"healthy": True, "service": "redis", "latency_ms": 1.1},
    ],
    "version": {"app": "INFER FORGE", "version": "0.1.0"},
}
UNHEALTHY = {
    "status": "unhealthy",
    "services": [
        {"healthy": True, "service": "database", "latency_ms": 2.3},
        {"healthy": False, "service": "redis", "latency_ms": 3000.0, "error": "Connection refused"},
    ],
    "version": {"app": "INFER FORGE", "version": "0.1.0"},
}


class StubApp:
    """Paths: /health (healthy), /unhealthy (503), /broken (500 text), /invalid (200, not JSON),
    /slow (answers after 10 s), /trickle (a byte every 0.2 s), /liar (200 but status unhealthy),
    /private (healthy for the Basic credentials ``PRIVATE_CREDENTIALS``, else 401). Every
    Authorization header is kept."""

    PRIVATE_CREDENTIALS = "ops:s3cret@!"

    def __init__(self):
        outer = self
        self.authorizations = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                import base64

                authorization = self.headers.get("Authorization")
                outer.authorizations.append(authorization)
                allowed = "Basic " + base64.b64encode(StubApp.PRIVATE_CREDENTIALS.encode()).decode()
                routes = {
                    "/health": (200, json.dumps(HEALTHY)),
                    "/unhealthy": (503, json.dumps(UNHEALTHY)),
                    "/broken": (500, "Internal Server Error"),
                    "/invalid": (200, "<html>oops</html>"),
                    "/liar": (200, json.dumps(dict(HEALTHY, status="unhealthy"))),
                    "/private": (200, json.dumps(HEALTHY)) if authorization == allowed else (401, "{}"),
                }
                if self.path == "/slow":
                    time.sleep(10)
                    code, body = 200, json.dumps(HEALTHY)
                elif self.path == "/trickle":
                    # A byte every 0.2 s for 8 s: no single read waits long enough for a socket timeout.
                    body = json.dumps(HEALTHY) + " " * 40
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        for char in body:
                            self.wfile.write(char.encode())
                            self.wfile.flush()
                            time.sleep(0.2)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                else:
                    code, body = routes.get(self.path, (404, "not found"))
                payload = body.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path="/health"):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class BlackHole:
    """A port that accepts TCP connections (the kernel's backlog does) and never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()
