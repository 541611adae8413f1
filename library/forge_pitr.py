#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_pitr
short_description: Point-in-time recovery of INFER FORGE with Barman, into a scratch cluster, and the PITR drill
description:
  - Runs on the Barman host as the C(barman) user (C(become_user)); Barman streams the database's WAL and takes
    base backups (the C(pitr) role).
  - O(mode=drill) creates a named restore point on the live server at which every user table's row count is
    exact (the tables are locked C(IN SHARE MODE) for the count, with a lock timeout, so no commit falls between
    the counts and the restore point), recovers to it into a new scratch cluster, compares the counts exactly,
    runs C(amcheck), removes the cluster and writes a report, metrics and, when it fails, a Sentry event.
  - O(mode=recover) recovers to the latest WAL Barman received (the segment still being streamed included),
    to O(target_time) or to O(target_name), into a new scratch cluster in its own directory under
    O(scratch_root), on O(scratch_port) with its socket in a private directory and no TCP listener. It never
    writes over the live server.
  - O(mode=serve) recovers as O(mode=recover) does, puts the copy's configuration files back as the base backup had
    them (Barman's C(.origin)), creates a one-time replication login, and restarts the copy listening on
    O(serve_port) with TLS (a certificate made for this put-back) for that login's base backup (C(pg_basebackup))
    from O(serve_client) only, SCRAM; the Barman host never sees a password of the database. C(forge_putback) on
    the database host pulls it into the Compose db service's volume (C(playbooks/dr_restore.yml)).
  - O(mode=remove) stops and removes the scratch cluster in O(data_directory).
  - Runs as the Barman user (C(become_user=barman)); as root it fails in one line and changes nothing.
  - O(mode=rejoin), after a put-back, makes Barman stream from the server on its new timeline. The receiver is
    stopped, the WAL it received on the old timeline and did not file is moved to a forensics directory beside
    Barman's home (never deleted), the slot is created, the receiver starts at the new server's position, a WAL
    switch proves the archive receives the new timeline, and O(base_backup) takes a new base backup.
  - O(mode=check) runs C(barman check) and returns the failed lines in Barman's own words.
  - O(mode=offsite_init) makes the restic repository at O(offsite_repository) when there is none and this host
    never recorded one (a repository that vanished is reported, never made again over a lost history).
  - O(mode=offsite) copies Barman's finished base backups and WAL to that repository with restic, encrypted on
    this host; O(mode=offsite_check) runs C(restic check) with O(offsite_check_subset) of the data read back.
    Both write C(infer_forge_pitr_offsite_*) metrics and report a failure to Sentry.
  - O(mode=offsite_restore), on a rebuilt Barman host, restores O(offsite_snapshot) from that repository (every
    file read back and verified) and moves its WAL and base backups into Barman's own catalog, only where no file
    of that name is; a snapshot of another PostgreSQL system is refused.
  - O(mode=offsite_prune) runs on the NAS, as the repository directory's owner (C(become_user=restic-rest-server)),
    on O(offsite_repository) as a directory there; it forgets the snapshots that arrived on the NAS more than
    O(offsite_keep_days) ago (never by the time a snapshot claims; never the O(offsite_keep_last) newest) and prunes
    the data only they held, so an erasure reaches the off-site copy within that window. The Barman hosts, whose
    rest-server logins are append-only, cannot.
version_added: "0.2.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
options:
  mode:
    description: What to do.
    type: str
    choices: [drill, recover, serve, remove, rejoin, check, offsite_init, offsite, offsite_check, offsite_restore,
      offsite_prune]
    default: drill
  server:
    description: The Barman server name.
    type: str
    default: infer-forge
  database:
    description: The database the drill checks and whose row counts a recovery returns.
    type: str
    default: infer_forge
  target_time:
    description: For O(mode=recover), recover to this time (PostgreSQL timestamp with time zone).
    type: str
  target_name:
    description: For O(mode=recover), recover to this restore point.
    type: str
  keep:
    description: Keep the scratch cluster running (O(mode=recover) keeps it by default; the drill removes it).
    type: bool
  remove_failed:
    description:
      - For O(mode=recover), remove the scratch directory of a recovery that failed once PostgreSQL ran (its
        replay ended in a C(FATAL), the counts failed). By default it is kept, with the server stopped, for
        inspection, and the error names it and PostgreSQL's log.
    type: bool
    default: false
  serve_client:
    description: For O(mode=serve), the address or network the database host's base backup comes from (as this
      host sees it).
    type: str
  serve_listen:
    description: For O(mode=serve), the address the copy listens on (C(*) for all of this host's).
    type: str
    default: "*"
  serve_port:
    description: For O(mode=serve), its port.
    type: int
    default: 55433
  serve_login:
    description: For O(mode=serve), the one-time replication login created in the copy for the base backup (the
      database host drops it once the put-back server runs).
    type: str
    default: infer_forge_putback
  serve_password:
    description: For O(mode=serve), its one-time password (at least 20 characters; the playbook makes one per run).
    type: str
  data_directory:
    description: For O(mode=remove), the scratch cluster's data directory (O(mode=serve) returns it).
    type: path
  base_backup:
    description: For O(mode=rejoin), take a new base backup of the new timeline (C(barman backup --wait)).
    type: bool
    default: true
  login_host:
    description: Where the live server is reached, for the drill's restore point.
    type: str
    default: db
  port:
    description: Its port.
    type: int
    default: 5432
  login_user:
    description: The login of the drill's restore point (it locks and counts the tables), and the role the scratch
      cluster is read as.
    type: str
    default: infer
  login_password:
    description: Its password.
    type: str
  postgres_bin:
    description: The binaries of the server's major, which start the scratch cluster.
    type: path
    default: /usr/lib/postgresql/17/bin
  scratch_root:
    description: Directory (0700) under which each recovery gets a new directory.
    type: path
    default: /var/lib/barman/infer-forge-scratch
  scratch_port:
    description: Port of the scratch cluster (its socket only).
    type: int
    default: 55432
  jobs:
    description: Processes C(barman restore) copies the base backup with; one per core when not set.
    type: int
  textfile_dir:
    description: For O(mode=drill), node_exporter textfile directory for C(infer_forge_pitr_drill_*) metrics.
    type: path
  report_dir:
    description: For O(mode=drill), directory for C(pitr_drill_<server>.json).
    type: path
  sentry_dsn:
    description: For O(mode=drill), report a failed drill to this Sentry DSN.
    type: str
  environment:
    description: Environment name sent with Sentry events.
    type: str
  offsite_repository:
    description: The off-site restic repository, C(rest:https://<nas>:<port>/<rest user>/) (a rest-server that
      runs C(--append-only --private-repos)).
    type: str
  offsite_password:
    description: The restic repository's password; it encrypts the copy. Handed to restic in its environment.
    type: str
  offsite_rest_user:
    description: The rest-server login of this host.
    type: str
  offsite_rest_password:
    description: Its password.
    type: str
  offsite_cacert:
    description: The NAS's pinned TLS certificate (PEM file); the copy refuses any other.
    type: path
  offsite_snapshot:
    description: For O(mode=offsite_restore), C(latest) or a snapshot id.
    type: str
    default: latest
  offsite_keep_days:
    description: For O(mode=offsite_prune), the days a snapshot is kept after it arrived on the NAS.
    type: int
    default: 30
  offsite_keep_last:
    description: For O(mode=offsite_prune), the newest snapshots kept however old they are.
    type: int
    default: 3
  offsite_check_subset:
    description: For O(mode=offsite_check), how much of the stored data C(restic check --read-data-subset) reads.
    type: str
    default: 5%
  fail_on_error:
    description: Fail the task when the drill, the check, the off-site copy or its check does not pass.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: O(mode=check) runs; the drill and a recovery report what they would do and do nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - Barman (Debian 13 C(barman)), the server major's PostgreSQL binaries and python3-psycopg on the Barman host
seealso:
  - module: infer.forge.forge_restore
"""

EXAMPLES = r"""
- name: Run the PITR drill
  become: true
  become_user: barman
  forge_pitr:
    mode: drill
    login_password: "{{ pitr_drill_login_password }}"

- name: Recover to just before the bad deploy, into a scratch cluster
  become: true
  become_user: barman
  forge_pitr:
    mode: recover
    target_time: "2026-12-03 14:05:00+01"
"""

RETURN = r"""
verdict:
  description: For O(mode=drill), PASS or FAIL.
  type: str
  returned: mode is drill
reason:
  description: For O(mode=drill), one line on what passed or what failed.
  type: str
  returned: mode is drill
restore_point:
  description: The drill's restore point.
  type: str
  returned: mode is drill
recovery_seconds:
  description: Time from the start of Barman's restore until the scratch cluster accepted connections, promoted.
  type: float
  returned: mode is drill or recover
data_directory:
  description: For O(mode=recover), the scratch cluster's data directory.
  type: str
  returned: mode is recover
socket_directory:
  description: For O(mode=recover), where its socket is (C(psql -h <it> -p <port>)).
  type: str
  returned: mode is recover
counts:
  description: For O(mode=recover), row counts per table of O(database) in the recovered copy.
  type: dict
  returned: mode is recover
port:
  description: For O(mode=recover), the scratch cluster's socket port; for O(mode=serve), the TCP port it is served on.
  type: int
  returned: mode is recover or serve
client:
  description: For O(mode=serve), the network the served copy's pg_hba lets the base backup come from.
  type: str
  returned: mode is serve
certificate:
  description: For O(mode=serve), the certificate (PEM) the served copy presents, made for this put-back.
  type: str
  returned: mode is serve
timeline:
  description: For O(mode=rejoin), the put-back server's timeline Barman now streams (8 hex digits).
  type: str
  returned: mode is rejoin
moved_to_forensics:
  description: For O(mode=rejoin), the WAL files of older timelines moved out of Barman's streaming directory (kept).
  type: list
  elements: str
  returned: mode is rejoin
base_backup:
  description: For O(mode=rejoin), the id of the new timeline's first base backup.
  type: str
  returned: mode is rejoin and O(base_backup) is true
removed:
  description: For O(mode=remove), the scratch directory removed.
  type: str
  returned: mode is remove
failed_checks:
  description: For O(mode=check), the lines C(barman check) marked FAILED.
  type: list
  elements: str
  returned: mode is check
repository_id:
  description: The off-site repository's id, as this host recorded it.
  type: str
  returned: mode is offsite_init, offsite or offsite_check
snapshots:
  description: For O(mode=offsite_init) and O(mode=offsite_check), this server's snapshots in the repository; for
    O(mode=offsite_prune), every snapshot it held before the prune.
  type: int
  returned: mode is offsite_init, offsite_check or offsite_prune
snapshot:
  description: For O(mode=offsite), the new snapshot's short id; for O(mode=offsite_restore), the one restored.
  type: str
  returned: mode is offsite or offsite_restore and it succeeded
base_backups:
  description: For O(mode=offsite_restore), the base backups moved into Barman's catalog.
  type: int
  returned: mode is offsite_restore
wal_files:
  description: For O(mode=offsite_restore), the WAL files moved into Barman's catalog.
  type: int
  returned: mode is offsite_restore
already_there:
  description: For O(mode=offsite_restore), the files and base backups Barman held already (kept as they were).
  type: int
  returned: mode is offsite_restore
expired:
  description: For O(mode=offsite_prune), the ids of the snapshots forgotten (or, in check mode, that would be).
  type: list
  elements: str
  returned: mode is offsite_prune
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from ansible.module_utils.forge.barman import Barman
    from ansible.module_utils.forge.errors import ForgeError, unexpected
    from ansible.module_utils.forge.pgconn import PgSettings
    from ansible.module_utils.forge.pitr import PitrOptions, PitrRecovery
    from ansible.module_utils.forge.pitr_offsite import OffsiteOptions, PitrOffsite, PruneOptions, prune_repository
    from ansible.module_utils.forge.pitr_serve import Rejoin, ScratchServer
    from ansible.module_utils.forge.records import PITR_REPORT_DIR
    from ansible.module_utils.forge.requirements import POSTGRES, first_missing
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc

ARGUMENT_SPEC = dict(
    mode=dict(type="str", choices=["drill", "recover", "serve", "remove", "rejoin", "check", "offsite_init", "offsite",
                                   "offsite_check", "offsite_restore", "offsite_prune"], default="drill"),
    server=dict(type="str", default="infer-forge"),
    database=dict(type="str", default="infer_forge"),
    target_time=dict(type="str"),
    target_name=dict(type="str"),
    keep=dict(type="bool"),
    serve_client=dict(type="str"),
    serve_listen=dict(type="str", default="*"),
    serve_port=dict(type="int", default=55433),
    serve_login=dict(type="str", default="infer_forge_putback"),
    serve_password=dict(type="str", no_log=True),
    data_directory=dict(type="path"),
    base_backup=dict(type="bool", default=True),
    remove_failed=dict(type="bool", default=False),
    login_host=dict(type="str", default="db"),
    port=dict(type="int", default=5432),
    login_user=dict(type="str", default="infer"),
    login_password=dict(type="str", no_log=True),
    postgres_bin=dict(type="path", default="/usr/lib/postgresql/17/bin"),
    scratch_root=dict(type="path", default="/var/lib/barman/infer-forge-scratch"),
    scratch_port=dict(type="int", default=55432),
    jobs=dict(type="int"),
    textfile_dir=dict(type="path"),
    report_dir=dict(type="path"),
    sentry_dsn=dict(type="str", no_log=True),
    environment=dict(type="str"),
    offsite_repository=dict(type="str"),
    offsite_password=dict(type="str", no_log=True),
    offsite_rest_user=dict(type="str"),
    offsite_rest_password=dict(type="str", no_log=True),
    offsite_cacert=dict(type="path"),
    offsite_check_subset=dict(type="str", default="5%"),
    offsite_keep_days=dict(type="int", default=30),
    offsite_keep_last=dict(type="int", default=3),
    offsite_snapshot=dict(type="str", default="latest"),
    fail_on_error=dict(type="bool", default=True),
)
OFFSITE_MODES = ("offsite_init", "offsite", "offsite_check", "offsite_restore")


class PitrModule:
    def __init__(self, module):
        self.module = module
        self.p = module.params

    def options(self, keep=False):
        p = self.p
        return PitrOptions(p["server"], postgres_bin=p["postgres_bin"], scratch_root=p["scratch_root"],
                           scratch_port=p["scratch_port"], login_user=p["login_user"], keep=keep,
                           textfile_dir=p["textfile_dir"], report_dir=p["report_dir"], sentry_dsn=p["sentry_dsn"],
                           environment=p["environment"], jobs=p["jobs"])

    def offsite(self):
        p = self.p
        options = OffsiteOptions(p["server"], p["offsite_repository"] or "", p["offsite_password"] or "",
                                 rest_user=p["offsite_rest_user"], rest_password=p["offsite_rest_password"],
                                 cacert=p["offsite_cacert"], check_subset=p["offsite_check_subset"],
                                 state_dir=p["report_dir"] or PITR_REPORT_DIR,
                                 textfile_dir=p["textfile_dir"], sentry_dsn=p["sentry_dsn"],
                                 environment=p["environment"])
        offsite = PitrOffsite(options, Barman(self.options()))
        if p["mode"] == "offsite_init":
            created, ident = offsite.init(check_mode=self.module.check_mode)
            snapshots = 0 if created else len(offsite.snapshots())
            return dict(changed=created, repository_id=ident, snapshots=snapshots)
        if p["mode"] == "offsite_restore":
            if self.module.check_mode:
                return dict(changed=True, msg=f"would restore off-site snapshot {p['offsite_snapshot']} of "
                                              f"{p['server']} into Barman's catalog")
            result = offsite.restore_into_barman(p["offsite_snapshot"])
            return dict(result, changed=bool(result["base_backups"] or result["wal_files"]))
        if self.module.check_mode:
            return dict(changed=p["mode"] == "offsite", msg=f"would {p['mode']} {p['server']} to "
                                                            f"{p['offsite_repository']}")
        result = offsite.copy() if p["mode"] == "offsite" else offsite.check()
        result["changed"] = p["mode"] == "offsite" and result["passed"]
        if not result["passed"] and p["fail_on_error"]:
            what = "copy" if p["mode"] == "offsite" else "check"
            result.update(failed=True, msg=f"off-site PITR {what} of {p['server']} failed: {result['reason']}")
        return result

    def prune(self):
        p = self.p
        options = PruneOptions(p["offsite_repository"] or "", p["offsite_password"] or "",
                               keep_days=p["offsite_keep_days"], keep_last=p["offsite_keep_last"])
        result = prune_repository(options, check_mode=self.module.check_mode)
        result["msg"] = (f"{'would prune' if self.module.check_mode else 'pruned'} {len(result['expired'])} "
                         f"snapshot(s) older than {options.keep_days} days of {result['snapshots']} in "
                         f"{options.repository}")
        return result

    def run(self):
        p = self.p
        if p["mode"] == "offsite_prune":
            return self.prune()
        if p["mode"] in OFFSITE_MODES:
            return self.offsite()
        if p["mode"] == "check":
            passed, failed = Barman(self.options()).check()
            result = dict(changed=False, passed=passed, failed_checks=failed)
            if not passed and p["fail_on_error"]:
                result.update(failed=True, msg=f"barman check {p['server']} failed: {'; '.join(failed)}")
            return result
        if self.module.check_mode:
            return dict(changed=True, msg=f"would {p['mode']} {p['server']} (scratch clusters under "
                                          f"{p['scratch_root']})")
        if p["mode"] == "remove":
            return dict(changed=True, **ScratchServer(self.options(), p["data_directory"] or "").remove())
        if p["mode"] == "rejoin":
            result = Rejoin(Barman(self.options())).run(base_backup=p["base_backup"])
            return dict(changed=True, **result)
        settings = PgSettings(host=p["login_host"], port=p["port"], user=p["login_user"],
                              password=p["login_password"], database=p["database"])
        if p["mode"] == "drill":
            result = PitrRecovery(self.options(keep=bool(p["keep"])), settings).drill(p["database"])
            result["changed"] = True
            if not result["passed"] and p["fail_on_error"]:
                result.update(failed=True, msg=f"PITR drill of {p['server']} failed: {result['reason']}")
            return result
        target, value = ("time", p["target_time"]) if p["target_time"] else (
            ("name", p["target_name"]) if p["target_name"] else ("latest", None))
        keep = True if p["keep"] is None or p["mode"] == "serve" else p["keep"]
        if p["mode"] == "serve" and not p["serve_client"]:
            raise ForgeError("mode=serve needs serve_client, the database host's address; nothing was changed")
        result = PitrRecovery(self.options(), settings).recover(target, value, database=p["database"], keep=keep,
                                                                remove_failed=p["remove_failed"])
        result["changed"] = True
        if p["mode"] == "serve":
            server = ScratchServer(self.options(), result["data_directory"])
            try:
                result.update(server.serve(p["serve_login"], p["serve_client"], p["serve_password"],
                                           p["serve_listen"], p["serve_port"]))
            except BaseException:
                server.remove()
                raise
        return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           mutually_exclusive=[("target_time", "target_name")])
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    if os.geteuid() == 0:
        # As root, Barman's catalog and WAL would gain root-owned files barman cannot read, and a
        # scratch PostgreSQL would start from root's session with a configuration from the source.
        module.fail_json(msg="forge_pitr runs as the Barman user (become: true, become_user: barman), never as root; "
                             "nothing was changed")
    if first_missing(POSTGRES):
        module.fail_json(msg=missing_required_lib(POSTGRES))
    try:
        result = PitrModule(module).run()
    except ForgeError as exc:
        module.fail_json(msg=exc.message)
    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
        module.fail_json(msg=f"forge_pitr {module.params['mode']} stopped: {unexpected(exc)}")
    if result.get("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
