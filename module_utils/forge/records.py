"""Where runs leave their records: the drill's report and metrics file, the
off-site copy's state, the accepted Sentry test event. Named here once, for the
code that writes them and the checklist that reads them; stdlib only, so the
checklist can run on hosts without the backup engine's libraries.
"""

import json
import os

from .catalog import file_stem

DRILL_METRIC_PREFIX = "infer_forge_restore_drill_"
# forge_sentry_event writes it (sentry role: sentry_test_event_record); checklist item 10 reads it.
SENTRY_TEST_EVENT_RECORD = "/var/lib/infer-forge/sentry-test-event.json"
OFFSITE_METRIC_PREFIX = "infer_forge_offsite_"


def drill_report_path(report_dir, database):
    return os.path.join(report_dir, f"restore_drill_{file_stem(database)}.json")


def drill_metrics_filename(database):
    return f"{DRILL_METRIC_PREFIX}{file_stem(database)}.prom"


def offsite_state_path(state_dir, database):
    return os.path.join(state_dir, f"offsite_{file_stem(database)}.json")


def offsite_metrics_filename(database):
    return f"{OFFSITE_METRIC_PREFIX}{file_stem(database)}.prom"


def sentry_test_event_record(accepted_at, event_id, status, endpoint, environment, dsn_fingerprint, host):
    """The evidence that Sentry accepted a test event (the endpoint is the DSN without its key)."""
    return {"accepted_at": accepted_at, "event_id": event_id, "status": status, "endpoint": endpoint,
            "environment": environment, "dsn_fingerprint": dsn_fingerprint, "host": host}


def read_sentry_test_event(path):
    """The record at ``path``, its ``accepted_at`` a float; None when there is none. A damaged
    record raises ValueError, naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable record: {exc}") from None
    try:
        return dict(record, accepted_at=float(record["accepted_at"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path} records no acceptance time") from None
