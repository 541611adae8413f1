"""Minimal Sentry reporting with the standard library only.

The on-host backup runs with Debian's python3 and must not depend on
sentry-sdk being installed, so failures are sent as a Sentry envelope over
HTTP(S). The DSN's key is a client key, yet it is still kept out of logs.
"""

import datetime
import json
import re
import socket
import urllib.error
import urllib.request
import uuid

from .errors import ForgeError

_DSN_RE = re.compile(r"^(?P<scheme>https?)://(?P<key>[0-9A-Za-z]+)(?::[0-9A-Za-z]+)?@(?P<host>[^/\s]+)"
                     r"(?P<path>/(?:[^/\s]+/)*)(?P<project>\d+)/?$")


class Dsn:
    def __init__(self, text):
        match = _DSN_RE.match((text or "").strip())
        if not match:
            raise ForgeError("SENTRY_DSN is not a valid DSN (expected https://KEY@HOST/PROJECT_ID)")
        self.scheme = match.group("scheme")
        self.key = match.group("key")
        self.host = match.group("host")
        self.path = match.group("path")
        self.project = match.group("project")

    @property
    def envelope_url(self):
        return f"{self.scheme}://{self.host}{self.path}api/{self.project}/envelope/"

    def redacted(self):
        return f"{self.scheme}://***@{self.host}{self.path}{self.project}"


def build_event(message, level="error", tags=None, contexts=None, environment=None, release=None, extra=None):
    event = {
        "event_id": uuid.uuid4().hex,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
        "platform": "python",
        "level": level,
        "logger": "infer-forge-ops",
        "server_name": socket.gethostname(),
        "message": {"formatted": message},
        "tags": dict(tags or {}),
        "contexts": dict(contexts or {}),
        "extra": dict(extra or {}),
    }
    if environment:
        event["environment"] = environment
    if release:
        event["release"] = release
    return event


def send_event(dsn_text, event, timeout=5.0):
    """POST one event; returns (http_status, event_id). Raises ForgeError on failure."""
    dsn = Dsn(dsn_text)
    payload = json.dumps(event).encode("utf-8")
    envelope = b"\n".join([
        json.dumps({"event_id": event["event_id"], "sent_at": event["timestamp"]}).encode(),
        json.dumps({"type": "event", "length": len(payload), "content_type": "application/json"}).encode(),
        payload,
    ]) + b"\n"
    # The DSN regex admits only http and https, so no file: or custom scheme reaches urlopen.
    request = urllib.request.Request(dsn.envelope_url, data=envelope, method="POST", headers={  # noqa: S310
        "Content-Type": "application/x-sentry-envelope",
        "X-Sentry-Auth": f"Sentry sentry_version=7, sentry_key={dsn.key}, sentry_client=infer-forge-ops/0.1",
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, event["event_id"]
    except urllib.error.HTTPError as exc:
        raise ForgeError(f"Sentry at {dsn.host} refused the event: HTTP {exc.code}", status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ForgeError(f"Sentry at {dsn.host} is unreachable: {reason}") from None


def report_failure(dsn_text, message, tags, environment=None):
    """Best effort: a failed report must never hide the failure it reports."""
    if not dsn_text:
        return None
    try:
        status, event_id = send_event(dsn_text, build_event(message, tags=tags, environment=environment))
        return {"status": status, "event_id": event_id}
    except ForgeError as exc:
        return {"error": exc.message}
