"""The runbook's production checklist ("Checklist před nasazením do produkce"),
item by item, as read-only checks on the host that owns each item.

Every check returns PASS, FAIL or WARN with the evidence it looked at;
report() puts the hosts' results together. Nothing here writes to disk or to
a service.
"""

import datetime
import glob
import json
import os
import pwd
import re
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from . import compose, metrics, records
from . import settings as declarations
from .catalog import TrustPolicy, file_stem, scan
from .errors import ForgeError, last_line
from .fsutil import read_json_object, read_small_file
from .sentry import Dsn
from .settings import read_env_file
from .signing import read_keyring, read_passphrase

PASS, FAIL, WARN = "PASS", "FAIL", "WARN"
# Beside backup.pass in the backup role's config directory (backup_retired_passphrases_file).
RETIRED_KEYRING_NAME = "backup-retired.pass"

# (Czech label as in the runbook, English label) and which inventory group's
# hosts own the item. What fixes an item is the deployment's business: the
# checklist role passes its fix lines to report().
GROUPS = {1: "app", 2: "app", 3: "backup", 4: "backup", 5: "backup", 6: "backup",
          7: "monitoring", 8: "monitoring", 9: "monitoring", 10: "app", 11: "app", 12: "pitr"}
ITEMS = {
    1: ("Nastavit SENTRY_DSN v .env", "SENTRY_DSN set in .env and valid"),
    2: ("Nastavit ENVIRONMENT=production", "The app runs with ENVIRONMENT=production"),
    3: ("Nakonfigurovat denní database backupy", "Daily backups configured, last one < {backup_max_age_hours:g} h"),
    4: ("Ověřit restore procesu na test databázi", "Restore drill passed within {drill_max_age_days:g} days"),
    5: ("Nastavit oprávnění na /backups adresář (chmod 700)", "Backup directory 0700, owner, files 0600"),
    6: ("Připravit off-site backup storage (NAS, USB trezor)", "Off-site copy configured, recent, verified"),
    7: ("Nastavit Prometheus scraping pro /health endpoint", "Prometheus scrapes the app's /health"),
    8: ("Vytvořit Grafana dashboardy", "Grafana dashboards provisioned"),
    9: ("Nastavit alerting pro zdravotní kontroly", "Alert rules loaded, Alertmanager routes valid"),
    10: ("Otestovat Sentry error capturing v production prostředí", "Sentry test event accepted recently"),
    11: ("Zkontrolovat logrotate nastavení pro application logy", "logrotate configured for app logs and valid"),
    # Beyond the runbook's eleven.
    12: ("Point-in-time recovery (nad rámec runbooku)",
         "Point-in-time recovery: WAL streaming up, base backup recent, PITR drill passed, copied off site"),
}
# Items beyond the runbook: an inventory without their group WARNs instead of failing.
BEYOND_THE_RUNBOOK = {12}
STATUSES = (PASS, WARN, FAIL, "SKIP")
PRODUCTION = "production"

DEFAULTS = {
    "environment": PRODUCTION,
    "env_file": "/opt/infer-forge/.env",
    # Compose deployments: items 1 and 2 read the running app container's environment.
    "app_compose_project": "",
    "app_compose_service": "app",
    "databases": ["infer_forge"],
    "backup_dir": declarations.STORE["backup_dir"].default,
    "backup_user": "infer",
    "config_dir": "/etc/infer-forge",
    "cron_file": "/etc/cron.d/infer-forge-backup",
    "compose_file": "/opt/infer-forge/docker-compose.backup.yml",
    "report_dir": declarations.STORE["report_dir"].role_default,
    "textfile_dir": declarations.STORE["textfile_dir"].role_default,
    "backup_max_age_hours": 26,
    "drill_max_age_days": 7,
    "offsite_max_age_hours": 26,
    # Item 4's evidence also names the DR drill where it ran on this host.
    "dr_drill_report_dir": "/var/lib/infer-forge/dr-drill",
    "dr_drill_textfile_dir": "/var/lib/infer-forge-metrics/dr-drill",
    # Item 12 reads barman's own textfile directory on the Barman host.
    "pitr_textfile_dir": declarations.PITR["textfile_dir"].role_default,
    "dr_drill_max_age_days": 35,
    "prometheus_url": "http://localhost:9090",
    "health_job": "infer-forge-health",
    "dashboards_dir": "/var/lib/grafana/dashboards/infer-forge",
    "provisioning_dir": "/etc/grafana/provisioning",
    "alertmanager_config": "/etc/prometheus/alertmanager.yml",
    "alertmanager_url": "http://localhost:9093",
    "sentry_record": records.SENTRY_TEST_EVENT_RECORD,
    "sentry_max_age_days": 30,
    "logrotate_files": ["/etc/logrotate.d/infer-forge-app"],
    # Item 12 (pitr hosts): the pitr role's metrics and drill report.
    "pitr_server": declarations.PITR["server"].default,
    "pitr_report_dir": records.PITR_REPORT_DIR,
    "pitr_base_backup_max_age_days": 8,
    "pitr_drill_max_age_days": 8,
    "pitr_offsite_max_age_hours": 6,
    "pitr_offsite_check_max_age_days": 8,
    "timeout": 5.0,
}


def describe(settings=None):
    """Every item's labels and owning group, for a report that must name items no host checked."""
    values = dict(DEFAULTS, **(settings or {}))
    return [{"item": number, "label": czech, "label_en": english.format(**values), "group": GROUPS[number]}
            for number, (czech, english) in ITEMS.items()]


def report(hosts, groups, fixes, full_run, environment, settings=None, now=None):
    """The checklist report: one row per item and host, in item order.

    ``hosts`` are ``{"host", "environment", "results"}`` as each host collected them;
    ``groups`` maps inventory groups to their hosts; ``fixes`` maps an item to the line
    that fixes it (shown on every row that did not pass). An item no host checked is
    SKIP, or FAIL when this was a full run and its group has no host: nobody runs it.
    The environment is production when any host is, else the first host's, else
    ``environment``.
    """
    fixes = {int(item): line for item, line in (fixes or {}).items()}
    hosts = sorted(hosts, key=lambda entry: entry["host"])
    rows = []
    for item in describe(settings):
        number, group = item["item"], item["group"]
        found = [(entry["host"], result) for entry in hosts for result in entry.get("results") or []
                 if result.get("item") == number]
        for host, result in found:
            rows.append(_row(result, host, result["status"], result["evidence"],
                             "" if result["status"] == PASS else fixes.get(number, "")))
        if found:
            continue
        if full_run and not groups.get(group):
            status = WARN if number in BEYOND_THE_RUNBOOK else FAIL
            rows.append(_row(item, "-", status, [f"no host in inventory group '{group}'"],
                             f"add the host that runs it to the group `{group}` and deploy"))
        else:
            rows.append(_row(item, "-", "SKIP", [f"not checked in this run (--tags/--limit, or no reachable "
                                                 f"host in group {group})"], ""))
    checked = [entry for entry in hosts if any(r.get("item") in ITEMS for r in entry.get("results") or [])]
    environments = [entry["environment"] for entry in checked]
    if PRODUCTION in environments:
        environment = PRODUCTION
    elif environments:
        environment = environments[0]
    moment = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
    return {"environment": environment or "unknown", "generated_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "hosts": [entry["host"] for entry in checked],
            "counts": {status: sum(row["status"] == status for row in rows) for status in STATUSES}, "rows": rows}


def _labelled(path, name, label):
    """The values of ``label`` of every sample of metric ``name`` in a textfile. Read as every
    record others write (read_small_file): the checklist runs as root and barman writes this."""
    found = []
    for line in (read_small_file(path) or "").splitlines():
        if line.startswith(name + "{"):
            match = re.search(label + r'="([^"]*)"', line)
            if match:
                found.append(match.group(1))
    return found


def _redacted(dsn):
    try:
        return Dsn(dsn).redacted()
    except ForgeError:
        return "(not a valid DSN)"


def _row(item, host, status, evidence, fix):
    return {"item": item["item"], "host": host, "label": item["label"], "label_en": item["label_en"],
            "status": status, "evidence": list(evidence), "fix": fix}


class Checklist:
    """``settings`` overrides DEFAULTS; ``clock`` is injectable for tests of ages."""

    def __init__(self, settings=None, clock=time.time):
        self.s = dict(DEFAULTS, **{k: v for k, v in (settings or {}).items() if v is not None})
        self.clock = clock

    def run(self, number):
        if number not in ITEMS:
            raise ForgeError(f"checklist item must be 1-{len(ITEMS)}, got {number}")
        czech, english = ITEMS[number]
        try:
            status, evidence = getattr(self, f"item_{number}")()
        except ForgeError as exc:
            status, evidence = FAIL, [exc.message]
        except OSError as exc:
            status, evidence = FAIL, [f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")]
        return {"item": number, "label": czech, "label_en": english.format(**self.s), "status": status,
                "evidence": evidence}

    # -- app host ---------------------------------------------------------------
    def _env(self):
        """(values, where): the running app container's environment under Compose (what the app
        sees), else the env file; and the env file's values when both exist, to spot drift."""
        path = self.s["env_file"]
        project = self.s["app_compose_project"]
        if not project:
            if not os.path.exists(path):
                raise ForgeError(f"{path} does not exist")
            return read_env_file(path), path, None
        service = self.s["app_compose_service"]
        name = compose.running_container(project, service, hint="checklist_app_compose_project")
        where = f"the running container {name} (service {service} of Compose project {project})"
        on_disk = read_env_file(path) if os.path.exists(path) else None
        return compose.container_environment(name), where, on_disk

    def _drift(self, key, running, on_disk, shown):
        """A line when the env file says otherwise than the running container: Compose reads the
        file only when it (re)creates the container."""
        if on_disk is None or on_disk.get(key, "") == running:
            return None
        service = self.s["app_compose_service"]
        return (f"{self.s['env_file']} has {shown}: the container was started before it changed "
                f"(docker compose up -d {service} applies it)")

    def item_1(self):
        values, where, on_disk = self._env()
        value = values.get("SENTRY_DSN", "")
        file_value = (on_disk or {}).get("SENTRY_DSN", "")
        if file_value and value:
            shown = "another SENTRY_DSN"
        else:
            shown = f"SENTRY_DSN={_redacted(file_value)}" if file_value else "no SENTRY_DSN"
        drift = self._drift("SENTRY_DSN", value, on_disk, shown)
        if not value:
            missing = f"SENTRY_DSN is empty or missing in {where} (errors reach no one)"
            return FAIL, [missing] + ([drift] if drift else [])
        evidence = [f"SENTRY_DSN={Dsn(value).redacted()} in {where}"]
        return (WARN, evidence + [drift]) if drift else (PASS, evidence)

    def item_2(self):
        values, where, on_disk = self._env()
        value = values.get("ENVIRONMENT", "")
        shown = f"ENVIRONMENT={(on_disk or {}).get('ENVIRONMENT') or '(unset)'}"
        drift = self._drift("ENVIRONMENT", value, on_disk, shown)
        evidence = [f"ENVIRONMENT={value or '(unset)'} in {where}"] + ([drift] if drift else [])
        if value == PRODUCTION:
            return (WARN if drift else PASS), evidence
        if self.s["environment"] != PRODUCTION:
            return WARN, evidence + [f"expected here: this inventory is {self.s['environment']!r}; "
                                     "production hosts need ENVIRONMENT=production"]
        return FAIL, evidence + ["production hosts need ENVIRONMENT=production"]

    def item_10(self):
        path = self.s["sentry_record"]
        try:
            record = records.read_sentry_test_event(path)
        except ValueError as exc:
            return FAIL, [str(exc)]
        if record is None:
            return FAIL, [f"no accepted test event on record ({path} missing)"]
        age = self.clock() - record["accepted_at"]
        evidence = [f"event {record.get('event_id', '?')} accepted (HTTP {record.get('status')}) "
                    f"{_age(age)} ago by {record.get('endpoint', '?')}, environment {record.get('environment')}"]
        if age > self.s["sentry_max_age_days"] * 86400:
            return FAIL, evidence + [f"older than {self.s['sentry_max_age_days']:g} days"]
        return PASS, evidence

    def item_11(self):
        evidence, status = [], PASS
        files = [path for pattern in self.s["logrotate_files"] for path in sorted(glob.glob(pattern))]
        if not files:
            return FAIL, [f"no logrotate config at {', '.join(self.s['logrotate_files'])}"]
        for path in files:
            proc = subprocess.run(["logrotate", "--debug", path], capture_output=True, text=True,
                                  timeout=self.s["timeout"] * 6, check=False)
            if proc.returncode != 0:
                status = FAIL
                evidence.append(f"{path}: logrotate --debug failed: {last_line(proc.stderr)}")
                continue
            logs = _logrotate_paths(path)
            evidence.append(f"{path}: valid (logrotate --debug), rotates {' '.join(logs) or 'nothing'}")
        return status, evidence

    # -- backup host ------------------------------------------------------------
    def _backup_trust(self):
        """The backup role's passphrase checks the manifests' signatures; without it (not
        readable here) a signed-looking manifest counts, but the item is at most a WARN."""
        path = os.path.join(self.s["config_dir"], "backup.pass")
        try:
            passphrase = read_passphrase(path)
        except ForgeError as exc:
            return TrustPolicy.unchecked(), f"manifest signatures not checked: {exc.message}"
        retired = os.path.join(self.s["config_dir"], RETIRED_KEYRING_NAME)
        try:
            ring = read_keyring(retired) if os.path.lexists(retired) else []
        except ForgeError as exc:
            return TrustPolicy(passphrase), f"backups under a retired key not proven: {exc.message}"
        return TrustPolicy(passphrase, retired=ring), None

    def item_3(self):
        evidence, status = [], PASS
        policy, unchecked = self._backup_trust()
        scheduled = self._scheduled_backups()
        for database in self.s["databases"]:
            how = scheduled.get(database)
            if how is None:
                status = FAIL
                evidence.append(f"{database}: no cron entry in {self.s['cron_file']} and no sidecar "
                                f"{self.s['compose_file']}")
                continue
            scanned = scan(self.s["backup_dir"], database, policy)
            good = [b for b in scanned if b.good]
            rotation = _key_rotation_evidence(database, scanned)
            if rotation:
                evidence.extend(rotation)
                status = WARN if status == PASS else status
            if not good:
                status = FAIL
                evidence.append(f"{database}: scheduled ({how}) but no good backup in {self.s['backup_dir']}")
                continue
            newest = good[0]
            age = self.clock() - newest.finished_at
            line = f"{database}: scheduled ({how}); newest {newest.name}, {_age(age)} old"
            if age > self.s["backup_max_age_hours"] * 3600:
                status = FAIL
                line += f" (older than {self.s['backup_max_age_hours']:g} h)"
            evidence.append(line)
        if unchecked:
            evidence.append(unchecked)
            status = WARN if status == PASS else status
        return status, evidence

    def _scheduled_backups(self):
        found = {}
        if os.path.exists(self.s["cron_file"]):
            with open(self.s["cron_file"], encoding="utf-8") as handle:
                for line in handle:
                    fields = line.split()
                    if line.lstrip().startswith("#") or "backup_db.sh" not in line or len(fields) < 7:
                        continue
                    match = re.search(r"BACKUP_CONFIG=\S*backup-(\S+)\.env", line)
                    schedule = " ".join(fields[:5])
                    for database in self.s["databases"]:
                        if match is None or match.group(1) == file_stem(database):
                            found.setdefault(database, f"cron {schedule}")
        if os.path.exists(self.s["compose_file"]):
            for database in self.s["databases"]:
                found.setdefault(database, f"Compose sidecar {self.s['compose_file']}")
        return found

    def item_4(self):
        evidence, status = [], PASS
        limit = self.s["drill_max_age_days"] * 86400
        for database in self.s["databases"]:
            report = read_json_object(records.drill_report_path(self.s["report_dir"], database))
            last_success = None
            if report.get("passed") and report.get("finished_at"):
                last_success = datetime.datetime.fromisoformat(report["finished_at"]).timestamp()
            prom = os.path.join(self.s["textfile_dir"], records.drill_metrics_filename(database))
            from_metrics = metrics.read_sample(prom, records.DRILL_METRIC_PREFIX + "last_success_timestamp_seconds")
            if last_success is None and from_metrics is not None:
                last_success = from_metrics
            if last_success is None:
                status = FAIL
                detail = f"; last drill failed: {report['reason']}" if report.get("reason") else ""
                evidence.append(f"{database}: no passed restore drill on record{detail}")
                continue
            age = self.clock() - last_success
            line = f"{database}: last passed drill {_iso(last_success)}, {_age(age)} ago"
            if report.get("passed"):
                line += f" ({report.get('tables_checked', 0)} tables, {report.get('rows_checked', 0)} rows " \
                        f"matched {os.path.basename(report.get('backup', '?'))})"
            elif report:
                # An earlier pass does not vouch for a backup the latest drill could not restore.
                status = FAIL
                line += f"; the latest drill FAILED: {report.get('reason', '?')}"
            if age > limit:
                status = FAIL
                line += f" - older than {self.s['drill_max_age_days']:g} days"
            evidence.append(line)
        drilled, dr_evidence = self._dr_drills()
        return (WARN if status == PASS and drilled == WARN else status), evidence + dr_evidence

    def _dr_drills(self):
        """The DR drill's reports on this host, if it ran here (the lab): a line per Compose
        project, WARN when the latest failed or none passed within dr_drill_max_age_days. The
        runbook's restore drill decides the item; a host where no DR drill runs adds nothing."""
        status, evidence = PASS, []
        limit = self.s["dr_drill_max_age_days"] * 86400
        now = self.clock()
        reports = os.path.join(glob.escape(self.s["dr_drill_report_dir"]), records.DR_DRILL_REPORT_GLOB)
        for path in sorted(glob.glob(reports)):
            project = records.dr_drill_project_of(path)
            report = read_json_object(path)
            prom = os.path.join(self.s["dr_drill_textfile_dir"], records.dr_drill_metrics_filename(project))
            passed_at = metrics.read_sample(prom, records.DR_DRILL_METRIC_PREFIX + "last_success_timestamp_seconds")
            if passed_at is None:
                status = WARN
                evidence.append(f"DR drill {project}: none passed; the latest: {report.get('reason', '?')}")
                continue
            line = f"DR drill {project}: last passed {_iso(passed_at)}, {_age(now - passed_at)} ago"
            if report.get("passed"):
                line += (f" (RPO {report.get('rpo_rows_lost', '?')} of {report.get('acknowledged_rows', '?')} "
                         f"acknowledged rows lost, RTO {report.get('rto_seconds', '?')} s until the app was healthy)")
            elif report:
                status = WARN
                line += f"; the latest DR drill FAILED: {report.get('reason', '?')}"
            if now - passed_at > limit:
                status = WARN
                line += f" - older than {self.s['dr_drill_max_age_days']:g} days"
            evidence.append(line)
        return status, evidence

    def item_12(self):
        """Read from the pitr role's own records: `forge pitr metrics` and the PITR drill."""
        server = self.s["pitr_server"]
        now = self.clock()
        prom = os.path.join(self.s["pitr_textfile_dir"], records.pitr_status_metrics_filename(server))
        drill_prom = os.path.join(self.s["pitr_textfile_dir"], records.pitr_drill_metrics_filename(server))
        if not os.path.exists(prom):
            return FAIL, [f"no PITR status at {prom} (forge pitr metrics has not run)"]
        status, evidence = PASS, []

        def sample(name):
            return metrics.read_sample(prom, records.PITR_STATUS_PREFIX + name)

        read_at = sample("status_timestamp_seconds")
        if read_at is None or now - read_at > 900:
            status = FAIL
            evidence.append(f"{server}: the PITR status is {_age(now - (read_at or 0))} old (forge pitr metrics "
                            "runs every 2 minutes)")
        failed = _labelled(prom, records.PITR_STATUS_PREFIX + "check_failed", "check")
        if sample("streaming_up") != 1:
            status = FAIL
            evidence.append(f"{server}: WAL streaming is down ({sample('checks_failed') or 0:g} barman checks failed"
                            + (f": {', '.join(failed)})" if failed else ")"))
        else:
            evidence.append(f"{server}: WAL streaming up, {sample('checks_failed') or 0:g} barman checks failed")
        backup = sample("last_base_backup_timestamp_seconds")
        if backup is None:
            status = FAIL
            evidence.append(f"{server}: no base backup")
        else:
            line = f"{server}: newest base backup {_iso(backup)}, {_age(now - backup)} ago"
            if now - backup > self.s["pitr_base_backup_max_age_days"] * 86400:
                status = FAIL
                line += f" - older than {self.s['pitr_base_backup_max_age_days']:g} days"
            evidence.append(line)
        drilled = metrics.read_sample(drill_prom, records.PITR_DRILL_METRIC_PREFIX + "last_success_timestamp_seconds")
        report = read_json_object(records.pitr_drill_report_path(self.s["pitr_report_dir"], server))
        if drilled is None:
            status = FAIL
            detail = f"; last drill failed: {report['reason']}" if report.get("reason") else ""
            evidence.append(f"{server}: no passed PITR drill on record{detail}")
        else:
            line = f"{server}: last passed PITR drill {_iso(drilled)}, {_age(now - drilled)} ago"
            if report.get("passed"):
                line += f" ({report.get('reason', '')})"
            elif report:
                status = FAIL
                line += f"; the latest PITR drill FAILED: {report.get('reason', '?')}"
            if now - drilled > self.s["pitr_drill_max_age_days"] * 86400:
                status = FAIL
                line += f" - older than {self.s['pitr_drill_max_age_days']:g} days"
            evidence.append(line)
        offsite_status, offsite_evidence = self._pitr_offsite(server, now)
        evidence += offsite_evidence
        return (FAIL if FAIL in (status, offsite_status) else offsite_status if status == PASS else status), evidence

    def _pitr_offsite(self, server, now):
        """The restic copy of the PITR data: recent, and its repository checked (read back)."""
        copy_prom = os.path.join(self.s["pitr_textfile_dir"], records.pitr_offsite_copy_metrics_filename(server))
        if not os.path.exists(copy_prom):
            return WARN, [f"{server}: the PITR data is not copied off site (pitr_offsite_enabled); only the "
                          "logical dumps leave the host"]
        state = read_json_object(records.pitr_offsite_state_path(self.s["pitr_report_dir"], server))
        status, evidence = PASS, []
        for what, prom, prefix, limit, unit in (
                ("copy", copy_prom, records.PITR_OFFSITE_COPY_PREFIX, self.s["pitr_offsite_max_age_hours"] * 3600, "h"),
                ("check", os.path.join(self.s["pitr_textfile_dir"],
                                       records.pitr_offsite_check_metrics_filename(server)),
                 records.PITR_OFFSITE_CHECK_PREFIX, self.s["pitr_offsite_check_max_age_days"] * 86400, "days")):
            last = state.get(f"last_{what}") if isinstance(state.get(f"last_{what}"), dict) else {}
            success = metrics.read_sample(prom, prefix + "last_success_timestamp_seconds")
            if success is None:
                status = FAIL
                evidence.append(f"{server}: no successful off-site PITR {what} on record"
                                + (f"; last: {last['reason']}" if last.get("reason") else ""))
                continue
            line = f"{server}: last off-site PITR {what} {_iso(success)}, {_age(now - success)} ago"
            if last.get("passed"):
                line += f" ({last.get('reason', '')})"
            elif last:
                status = FAIL
                line += f"; the latest {what} FAILED: {last.get('reason', '?')}"
            if now - success > limit:
                status = FAIL
                line += f" - older than {limit / (3600 if unit == 'h' else 86400):g} {unit}"
            evidence.append(line)
        return status, evidence

    def item_5(self):
        path = self.s["backup_dir"]
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return FAIL, [f"{path} is a symlink"]
        owner = _user_name(info.st_uid)
        mode = stat.S_IMODE(info.st_mode)
        evidence = [f"{path}: mode {mode:04o}, owner {owner}"]
        status = PASS
        if mode != 0o700:
            status = FAIL
            evidence[0] += " (must be 0700)"
        if owner != self.s["backup_user"]:
            status = FAIL
            evidence[0] += f" (must be owned by {self.s['backup_user']})"
        loose = []
        count = 0
        for name in sorted(os.listdir(path)):
            file_info = os.lstat(os.path.join(path, name))
            if not stat.S_ISREG(file_info.st_mode):
                continue
            count += 1
            if stat.S_IMODE(file_info.st_mode) & 0o077:
                loose.append(f"{name} ({stat.S_IMODE(file_info.st_mode):04o})")
        if loose:
            status = FAIL
            evidence.append(f"{len(loose)} of {count} files readable by others: {', '.join(loose[:5])}")
        else:
            evidence.append(f"all {count} files 0600 or stricter")
        return status, evidence

    def item_6(self):
        evidence, status = [], PASS
        for database in self.s["databases"]:
            stem = file_stem(database)
            config_path = os.path.join(self.s["config_dir"], f"backup-{stem}.env")
            config = read_env_file(config_path, root_trusts=True) if os.path.exists(config_path) else {}
            target = config.get("OFFSITE_TARGET")
            if not target:
                status = FAIL
                evidence.append(f"{database}: no OFFSITE_TARGET in {config_path}")
                continue
            state = read_json_object(records.offsite_state_path(self.s["report_dir"], database))
            if not state.get("last_success"):
                status = FAIL
                evidence.append(f"{database}: target {target}, but no successful off-site copy on record"
                                + (f"; last run: {state['reason']}" if state.get("reason") else ""))
                continue
            age = self.clock() - float(state["last_success"])
            line = f"{database}: {target}, last verified copy {_age(age)} ago"
            if state.get("remote_backups") is not None and state.get("passed"):
                line += f", {state['remote_backups']} verified backup(s) there"
            if not state.get("passed"):
                status = FAIL
                line += f"; the latest run FAILED: {state.get('reason', '?')}"
            if age > self.s["offsite_max_age_hours"] * 3600:
                status = FAIL
                line += f" - older than {self.s['offsite_max_age_hours']:g} h"
            receipt = state.get("receipt") if isinstance(state.get("receipt"), dict) else None
            if receipt:
                # The NAS's own word (its receipt), not only this host's.
                line += (f"; NAS receipt {receipt.get('verified_at') or '?'}: {receipt.get('copies', 0)} verified "
                         f"there, {len(receipt.get('quarantined') or [])} quarantined")
                if not receipt.get("ok", False):
                    status = FAIL
            evidence.append(line)
        return status, evidence

    # -- monitoring host --------------------------------------------------------
    def _get(self, base, path, params=None):
        url = base.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            # The default opener, as urlopen uses; the engine has no Ansible to offer open_url.
            with urllib.request.build_opener().open(url, timeout=self.s["timeout"]) as response:  # noqa: S310
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ForgeError(f"cannot ask {base}{path}: {getattr(exc, 'reason', exc)}") from None

    def item_7(self):
        data = self._get(self.s["prometheus_url"], "/api/v1/targets", {"state": "active"})
        targets = [t for t in data["data"]["activeTargets"]
                   if t["labels"].get("job") == self.s["health_job"] or "/health" in t.get("scrapeUrl", "")]
        if not targets:
            return FAIL, [f"Prometheus at {self.s['prometheus_url']} has no target probing /health "
                          f"(job {self.s['health_job']})"]
        probes = self._get(self.s["prometheus_url"], "/api/v1/query",
                           {"query": f'probe_success{{job="{self.s["health_job"]}"}}'})["data"]["result"]
        success = {p["metric"].get("instance"): p["value"][1] for p in probes}
        evidence, status = [], PASS
        for target in targets:
            instance = target["labels"].get("instance", target.get("scrapeUrl"))
            probe = success.get(instance)
            line = f"{instance} ({target['labels'].get('host', '?')}): scrape {target['health']}, probe_success {probe}"
            if target["health"] != "up" or probe != "1":
                status = FAIL
                line += f" {target.get('lastError') or ''}".rstrip()
            evidence.append(line)
        return status, evidence

    def item_8(self):
        dashboards = sorted(glob.glob(os.path.join(self.s["dashboards_dir"], "*.json")))
        provider = os.path.join(self.s["provisioning_dir"], "dashboards")
        providers = [p for p in sorted(glob.glob(os.path.join(provider, "*.y*ml")))
                     if self.s["dashboards_dir"] in _read_text(p)]
        evidence, status = [], PASS
        if not providers:
            status = FAIL
            evidence.append(f"no provisioning file in {provider} points at {self.s['dashboards_dir']}")
        else:
            evidence.append(f"provisioned by {', '.join(providers)}")
        if not dashboards:
            return FAIL, evidence + [f"no dashboard JSON in {self.s['dashboards_dir']}"]
        for path in dashboards:
            try:
                with open(path, encoding="utf-8") as handle:
                    board = json.load(handle)
            except ValueError as exc:
                status = FAIL
                evidence.append(f"{path}: not valid JSON ({exc})")
                continue
            panels = [p for p in board.get("panels", []) if p.get("type") != "row"]
            evidence.append(f"{os.path.basename(path)}: {board.get('title', '?')!r}, {len(panels)} panels")
        return status, evidence

    def item_9(self):
        groups = self._get(self.s["prometheus_url"], "/api/v1/rules", {"type": "alert"})["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        broken = [r["name"] for r in rules if r.get("health", "ok") != "ok"]
        firing = sorted({r["name"] for r in rules if r.get("state") == "firing"})
        evidence, status = [], PASS
        line = f"Prometheus: {len(rules)} alerting rules loaded in {len(groups)} group(s)"
        line += f", firing now: {', '.join(firing)}" if firing else ", none firing"
        evidence.append(line)
        if not rules or broken:
            status = FAIL
            evidence.append(f"rules with errors: {', '.join(broken)}" if broken else "no alerting rules loaded")
        proc = subprocess.run(["amtool", "check-config", self.s["alertmanager_config"]], capture_output=True,
                              text=True, timeout=self.s["timeout"] * 6, check=False)
        if proc.returncode != 0:
            status = FAIL
            evidence.append(f"{self.s['alertmanager_config']}: amtool check-config failed: "
                            f"{_amtool_reason(proc.stdout) or last_line(proc.stderr or proc.stdout)}")
        else:
            found = ", ".join(re.findall(r"^ - (\d+ (?:receivers|inhibit rules))$", proc.stdout, re.M))
            evidence.append(f"{self.s['alertmanager_config']}: valid (amtool check-config), {found or 'no receivers'}")
        status_doc = self._get(self.s["alertmanager_url"], "/api/v2/status")
        cluster = status_doc.get("cluster", {}).get("status", "?")
        evidence.append(f"Alertmanager at {self.s['alertmanager_url']}: up, cluster {cluster}")
        alertmanagers = self._get(self.s["prometheus_url"], "/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        if not alertmanagers:
            status = FAIL
            evidence.append("Prometheus sends alerts to no Alertmanager")
        return status, evidence


# A webhook or SMTP URL in the config is a secret: amtool quotes it when it cannot parse it.
_URL = re.compile(r"""(?:parse |\b[a-z][a-z0-9+.-]*://)[^\s,]*""", re.IGNORECASE)


def _key_rotation_evidence(database, backups):
    """Lines naming the backups a key rotation left behind: those a retired key proves (they
    restore, and leave by retention) and those no configured key proves (kept for ever)."""
    lines = []
    retired = [b for b in backups if b.good and b.retired_key_id]
    if retired:
        keys = ", ".join(sorted({b.retired_key_id for b in retired}))
        many = len(retired) > 1
        lines.append(f"{database}: {len(retired)} backup{'s' if many else ''} under a retired key ({keys}): "
                     f"{', '.join(b.name for b in retired)}; {'they restore' if many else 'it restores'} with the "
                     f"retired passphrase and {'leave' if many else 'leaves'} by retention")
    unproven = [b for b in backups if b.unknown_key_id]
    if unproven:
        lines.append(f"{database}: {len(unproven)} backup{'s' if len(unproven) > 1 else ''} no configured key proves, "
                     f"kept until its passphrase is in {RETIRED_KEYRING_NAME}: "
                     + ", ".join(f"{b.name} (key {b.unknown_key_id})" for b in unproven))
    return lines


def _amtool_reason(stdout):
    """amtool says why on stdout ("FAILED: undefined receiver ..."), only that it failed on stderr;
    a YAML error continues on the next, indented line. URLs are left out of the report."""
    lines = stdout.splitlines()
    for index, line in enumerate(lines):
        if "FAILED" in line:
            reason = [line.split("FAILED", 1)[1].lstrip(": ").strip()]
            reason += [item.strip() for item in lines[index + 1:index + 4] if item[:1].isspace() and item.strip()]
            return _URL.sub("(URL hidden)", " ".join(reason))
    return ""


def _read_text(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _logrotate_paths(path):
    found = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line.endswith("{"):
                found.extend(line[:-1].split())
    return found


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _age(seconds):
    seconds = max(0, seconds)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _iso(timestamp):
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
