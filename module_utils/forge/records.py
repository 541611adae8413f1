"""Where runs leave their records: the drill's report and metrics file, the
off-site copy's state, the accepted Sentry test event. Named here once, for the
code that writes them and the checklist that reads them; stdlib only, so the
checklist can run on hosts without the backup engine's libraries.
"""

import json
import os

from .catalog import file_stem

BACKUP_METRIC_PREFIX = "infer_forge_backup_"
DRILL_METRIC_PREFIX = "infer_forge_restore_drill_"
# forge_sentry_event writes it (sentry role: sentry_test_event_record); checklist item 10 reads it.
SENTRY_TEST_EVENT_RECORD = "/var/lib/infer-forge/sentry-test-event.json"
OFFSITE_METRIC_PREFIX = "infer_forge_offsite_"


def backup_metrics_filename(database):
    return f"{BACKUP_METRIC_PREFIX}{file_stem(database)}.prom"


def drill_report_path(report_dir, database):
    return os.path.join(report_dir, f"restore_drill_{file_stem(database)}.json")


def drill_metrics_filename(database):
    return f"{DRILL_METRIC_PREFIX}{file_stem(database)}.prom"


def offsite_state_path(state_dir, database):
    return os.path.join(state_dir, f"offsite_{file_stem(database)}.json")


def offsite_metrics_filename(database):
    return f"{OFFSITE_METRIC_PREFIX}{file_stem(database)}.prom"


# The DR drill's, one per Compose project: the checklist finds its reports by the glob.
DR_DRILL_METRIC_PREFIX = "infer_forge_dr_drill_"
DR_DRILL_REPORT_GLOB = "dr_drill_*.json"


def dr_drill_report_path(report_dir, project):
    return os.path.join(report_dir, f"dr_drill_{project}.json")


def dr_drill_project_of(report_path):
    """The project a DR drill report at ``report_path`` is of."""
    return os.path.basename(report_path)[len("dr_drill_"):-len(".json")]


def dr_drill_metrics_filename(project):
    return f"{DR_DRILL_METRIC_PREFIX}{project}.prom"


# Point-in-time recovery, on the Barman host. Its reports sit in barman's own directory, apart
# from the backup role's /var/lib/infer-forge/reports (a host may run both).
PITR_REPORT_DIR = "/var/lib/barman/infer-forge-reports"
PITR_STATUS_PREFIX = "infer_forge_pitr_"
PITR_DRILL_METRIC_PREFIX = "infer_forge_pitr_drill_"
PITR_OFFSITE_COPY_PREFIX = "infer_forge_pitr_offsite_"
PITR_OFFSITE_CHECK_PREFIX = "infer_forge_pitr_offsite_check_"


def pitr_status_metrics_filename(server):
    return f"{PITR_STATUS_PREFIX}{server}.prom"


def pitr_drill_report_path(report_dir, server):
    return os.path.join(report_dir, f"pitr_drill_{server}.json")


def pitr_drill_metrics_filename(server):
    return f"{PITR_DRILL_METRIC_PREFIX}{server}.prom"


def pitr_offsite_copy_metrics_filename(server):
    return f"{PITR_OFFSITE_COPY_PREFIX}{server}.prom"


def pitr_offsite_check_metrics_filename(server):
    return f"{PITR_OFFSITE_CHECK_PREFIX}{server}.prom"


def pitr_offsite_state_path(state_dir, server):
    return os.path.join(state_dir, f"pitr_offsite_{server}.json")


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
