"""Where runs leave their records: the drill's report and metrics file, the
off-site copy's state. Named here once, for the code that writes them and the
checklist that reads them; stdlib only, so the checklist can run on hosts
without the backup engine's libraries.
"""

import os

from .catalog import file_stem

DRILL_METRIC_PREFIX = "infer_forge_restore_drill_"
OFFSITE_METRIC_PREFIX = "infer_forge_offsite_"


def drill_report_path(report_dir, database):
    return os.path.join(report_dir, f"restore_drill_{file_stem(database)}.json")


def drill_metrics_filename(database):
    return f"{DRILL_METRIC_PREFIX}{file_stem(database)}.prom"


def offsite_state_path(state_dir, database):
    return os.path.join(state_dir, f"offsite_{file_stem(database)}.json")


def offsite_metrics_filename(database):
    return f"{OFFSITE_METRIC_PREFIX}{file_stem(database)}.prom"
