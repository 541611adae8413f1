#!/usr/bin/env python3
"""The team's webhook for the monitoring scenario: keeps every notification Alertmanager posts.

Usage: webhook_receiver.py HOST PORT FILE. Each POST is appended to FILE as one JSON line,
{"path": ..., "body": ...}, so the verifier can read what the team would have been told.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"path": self.path, "body": json.loads(body)}) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    HTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
