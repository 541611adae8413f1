#!/usr/bin/env python3
"""A stand-in for Sentry's envelope endpoint, for the lab and Molecule.

Answers every POST with 200 and a JSON id, as Sentry's ingest does, and appends
each request (path, then body) to SENTRY_STUB_LOG (default
/var/tmp/sentry-envelopes), so a test can read what Sentry would have stored.
Listens on SENTRY_STUB_BIND (default 127.0.0.1), port SENTRY_STUB_PORT (9000).
"""

import os
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = os.environ.get("SENTRY_STUB_LOG", "/var/tmp/sentry-envelopes")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(LOG, "ab") as out:
            out.write(self.path.encode() + b"\n" + body + b"\n---\n")
        answer = ('{"id": "%s"}' % uuid.uuid4().hex).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    address = (os.environ.get("SENTRY_STUB_BIND", "127.0.0.1"), int(os.environ.get("SENTRY_STUB_PORT", "9000")))
    ThreadingHTTPServer(address, Handler).serve_forever()
