"""How every job ends: its outcome recorded where the checklist, the alerts and the on-call
engineer look, the same way for each.

A job (a restore drill, an off-site copy, the PITR drill and its off-site copy) writes its JSON
report or state atomically (0640 in a 0750 directory), its node_exporter metrics, and on failure
one Sentry event. A step that cannot be done is noted in the result (``report_error``,
``metrics_error``) and never hides the job's own verdict. The DR drill and the backup take the
metrics and Sentry parts; the DR drill's report is its evidence for the checklist, so one that
cannot be written stops it, and the backup's metrics describe the directory, not a run.
"""

import json
import os

from . import metrics, sentry
from .fsutil import write_atomic


def write_report(result, path, document=None, key="report", error_key="report_error"):
    """The job's report (``document``, the result itself by default) at ``path``; its path under
    ``key`` in the result, or why it could not be written under ``error_key``."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        write_atomic(path, json.dumps(result if document is None else document, indent=2, sort_keys=True,
                                      default=str) + "\n", mode=0o640)
        result[key] = path
    except OSError as exc:
        result[error_key] = str(exc)


def write_metrics(result, textfile_dir, filename, prefix, labels, samples, now, success_help):
    """The job's samples ((name, help, value)) and its last-run/last-success gauges."""
    error = metrics.write_run(textfile_dir, filename, prefix, labels, samples, result["passed"], now, success_help)
    if error:
        result["metrics_error"] = error


def report_failure(result, dsn, message, component, database, host, environment):
    """One Sentry event for a failed run; what Sentry said under ``sentry``."""
    report = sentry.report_failure(dsn, message, component, database, host, environment)
    if report:
        result["sentry"] = report
