"""Sentry reporting: DSN parsing, envelopes, synchronous delivery.

The on-host backup must not depend on sentry-sdk being installed, so its
failure reports are built here and sent over HTTP(S) with the standard
library. The checklist's test event goes through sentry-sdk when it is there
(:func:`send_with_sentry_sdk`), delivered by the same code so the server's
answer is known. The DSN's key is a client key, yet it is kept out of logs.
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


def post_envelope(dsn, body, timeout=5.0):
    """POST a serialized envelope to the DSN's project; returns the HTTP status."""
    # The DSN regex admits only http and https, so no file: or custom scheme reaches the opener.
    request = urllib.request.Request(dsn.envelope_url, data=body, method="POST", headers={  # noqa: S310
        "Content-Type": "application/x-sentry-envelope",
        "X-Sentry-Auth": f"Sentry sentry_version=7, sentry_key={dsn.key}, sentry_client=infer-forge-ops/0.1",
    })
    try:
        # The default opener, as urlopen uses; the engine has no Ansible to offer open_url.
        with urllib.request.build_opener().open(request, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        hint = " (rate limited)" if exc.code == 429 else ""
        raise ForgeError(f"Sentry at {dsn.host} refused the event: HTTP {exc.code}{hint}", status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ForgeError(f"Sentry at {dsn.host} is unreachable: {reason}") from None


def envelope_for(event):
    payload = json.dumps(event).encode("utf-8")
    return b"\n".join([
        json.dumps({"event_id": event["event_id"], "sent_at": event["timestamp"]}).encode(),
        json.dumps({"type": "event", "length": len(payload), "content_type": "application/json"}).encode(),
        payload,
    ]) + b"\n"


def send_event(dsn_text, event, timeout=5.0):
    """POST one event built by :func:`build_event`; returns (http_status, event_id)."""
    dsn = Dsn(dsn_text)
    return post_envelope(dsn, envelope_for(event), timeout), event["event_id"]


def send_with_sentry_sdk(dsn_text, message, tags, contexts, environment=None, release=None, timeout=5.0):
    """Build and serialize the event with sentry-sdk (1.x as in Debian 12, or 2.x), then
    deliver it ourselves, synchronously, so the caller learns the server's answer
    (sentry-sdk's own transport sends in the background and never says).
    Returns (http_status, event_id, sdk_version)."""
    import sentry_sdk
    from sentry_sdk.envelope import Envelope
    from sentry_sdk.transport import Transport

    dsn = Dsn(dsn_text)
    captured = []

    class CapturingTransport(Transport):
        def capture_envelope(self, envelope):
            captured.append(envelope)

        def capture_event(self, event):  # sentry-sdk 1.x hands plain events here
            envelope = Envelope(headers={"event_id": event["event_id"]})
            envelope.add_event(event)
            captured.append(envelope)

        def flush(self, timeout=None, callback=None):
            pass

        def kill(self):
            pass

    sentry_sdk.init(dsn=dsn_text, transport=CapturingTransport, environment=environment, release=release,
                    default_integrations=False, traces_sample_rate=0)
    try:
        for key, value in tags.items():
            sentry_sdk.set_tag(key, value)
        for key, value in contexts.items():
            sentry_sdk.set_context(key, value)
        event_id = sentry_sdk.capture_message(message, level="error")
        sentry_sdk.flush(timeout=timeout)
    finally:
        # sentry-sdk 2.x has get_client(); 1.x only the (since deprecated) Hub.
        client = sentry_sdk.get_client() if hasattr(sentry_sdk, "get_client") else sentry_sdk.Hub.current.client
        if client is not None:
            client.close(timeout=0)
    events = [e for e in captured if any(item.type == "event" for item in e.items)]
    if not events:
        raise ForgeError("sentry-sdk produced no event (is the DSN disabled?)")
    status = post_envelope(dsn, events[0].serialize(), timeout)
    return status, event_id, sentry_sdk.VERSION


def report_failure(dsn_text, message, component, database, host, environment=None):
    """Report a failed backup, drill or off-site copy, tagged as the runbook tags events.

    Best effort: a failed report must never hide the failure it reports.
    """
    if not dsn_text:
        return None
    tags = {"component": component, "database": database, "host": host}
    try:
        status, event_id = send_event(dsn_text, build_event(message, tags=tags, environment=environment))
        return {"status": status, "event_id": event_id}
    except ForgeError as exc:
        return {"error": exc.message}
