"""Both hosts gone, the logical way back: the database host has lost its backups and its
database (the db service's volume replaced by a fresh, empty one), Barman is no help, and the
newest copy the NAS verified comes back with playbooks/offsite_restore.yml into the fresh
Compose db, with the rows it held. Runs last in the scenario: it replaces the database."""

import glob
import json
import os
import re
import sys
import tempfile

import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import playbook  # noqa: E402

testinfra_hosts = ["docker://e2e-db"]

DB, NAS = "e2e-db", "e2e-nas"
PROJECT = "forge-e2e-db"
STACK_DIR = "/opt/infer-forge-stack"
OFFSITE_DIR = "/srv/infer-forge-offsite/backups"
COUNTS = "SELECT (SELECT count(*) FROM orders) || ' ' || (SELECT count(*) FROM customers)"


def on(name):
    return testinfra.get_host(f"docker://{name}")


def container(db, service):
    return db.check_output(f"docker ps --filter label=com.docker.compose.project={PROJECT} "
                           f"--filter label=com.docker.compose.service={service} --format '{{{{.Names}}}}'")


def psql(db, statement):
    return db.run(f"docker exec {container(db, 'db')} psql -X -U infer -d infer_forge -Atc \"{statement}\"")


def stages_on_the_controller():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "infer-forge-offsite-restore-*")))


def test_with_both_hosts_gone_the_newest_verified_copy_on_the_nas_comes_back_into_a_fresh_compose_db():
    db, nas = on(DB), on(NAS)
    copied = playbook("offsite.yml")
    assert copied.returncode == 0, copied.stdout[-3000:]
    newest_here = os.path.basename(db.check_output("ls -1t /backups/infer_forge_*.sql.gz.enc | head -1"))
    assert nas.file(f"{OFFSITE_DIR}/{newest_here}").exists
    before = psql(db, COUNTS)
    assert before.rc == 0 and before.stdout.strip() != "0 0", before.stderr
    stages = stages_on_the_controller()

    # The bad day: every backup on the database host gone, and the database with them.
    db.check_output("find /backups -mindepth 1 -delete")
    db.check_output(f"cd {STACK_DIR} && docker compose -p {PROJECT} rm --stop --force db && "
                    f"docker volume rm {PROJECT}_db-data && docker compose -p {PROJECT} up -d --wait db")
    assert psql(db, COUNTS).rc != 0  # a fresh, empty database: no runbook tables

    restored = playbook("offsite_restore.yml", "-e", "backup_restore_target=infer_forge",
                        "-e", "backup_restore_confirm=infer_forge", timeout=1800)
    assert restored.returncode == 0, restored.stdout[-4000:]
    said = " ".join(restored.stdout.split())  # the callback wraps long messages
    assert re.search(rf"{re.escape(newest_here)} \(\d+ bytes, sha256 [0-9a-f]{{16}}\.\.\., read again on the NAS now\)",
                     said), restored.stdout[-3000:]
    assert f"restored {newest_here} into infer_forge (replaced the empty database, VERIFIED)" in said, said[-3000:]
    after = psql(db, COUNTS)
    assert after.rc == 0 and after.stdout.strip() == before.stdout.strip(), (before.stdout, after.stdout)
    # The copy is in the backup directory as the backup host keeps its own, and nowhere else.
    copy = db.file(f"/backups/{newest_here}")
    assert copy.user == "infer" and copy.mode == 0o600
    manifest = json.loads(db.file(f"/backups/{newest_here}.manifest.json").content_string)
    assert db.check_output(f"sha256sum /backups/{newest_here}").split()[0] == manifest["sha256"]
    assert stages_on_the_controller() == stages
    health = db.run(f"docker exec {container(db, 'app')} curl -fsS http://127.0.0.1:8000/health")
    assert health.rc == 0, health.stdout + health.stderr
    # A file of that name that is not the NAS's copy (planted, or damaged) is never restored.
    db.check_output(f"runuser -u infer -- sh -c 'echo planted > /backups/{newest_here}'")
    refused = playbook("offsite_restore.yml", "-e", "backup_restore_target=infer_forge",
                       "-e", "backup_restore_confirm=infer_forge", "-e", "backup_restore_force=true", timeout=1800)
    assert refused.returncode != 0
    assert (f"/backups/{newest_here} exists and is not the copy the NAS verified (another sha256); nothing was "
            "restored") in " ".join(refused.stdout.split()), refused.stdout[-3000:]
    assert psql(db, COUNTS).stdout.strip() == before.stdout.strip()
    assert stages_on_the_controller() == stages
    print(f"\nThe way back from the NAS alone: {newest_here} restored into a fresh Compose db, "
          f"counts {after.stdout.strip()} as before, the app's /health green")
