"""The off-site copy of the PITR data: restic on the Barman host, encrypted there, to the NAS's
rest-server (--append-only, --private-repos, TLS with its certificate pinned). Proves the copy
made at deploy and its check, that the NAS holds ciphertext only and never the repository
password, that the Barman host's own login cannot delete a snapshot, that a damaged pack, a
NAS with another certificate, a wrong password or a vanished repository each fail in one line
and change nothing, and that the copy comes back and recovers with Barman."""

import json
import os
import re
import shlex
import sys
import time
import uuid

import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import compose_container, playbook  # noqa: E402

testinfra_hosts = ["docker://pitr-barman"]

SERVER = "infer-forge"
REPOSITORY = "rest:https://pitr-nas:8000/pitr-barman/"
NAS_REPOSITORY_DIR = "/srv/infer-forge-pitr/pitr-barman"
PSQL = "psql -X -q -v ON_ERROR_STOP=1 -U infer -d infer_forge"
TEXTFILE = "/var/lib/infer-forge-metrics/pitr"


def nas():
    return testinfra.get_host("docker://pitr-nas")


def forge(host, action, **env):
    """forge pitr <action> as barman with the deployed config; ``env`` overrides its settings."""
    overrides = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    return host.run(f"runuser -u barman -- env PITR_CONFIG=/etc/infer-forge/pitr.env {overrides} "
                    f"/opt/infer-forge/scripts/forge pitr {action}")


def restic(host, *args):
    """restic as barman with the deployed login: what a compromised Barman host could do."""
    config = dict(line.split("=", 1) for line in host.file("/etc/infer-forge/pitr.env").content_string.splitlines()
                  if line.startswith("PITR_OFFSITE_"))
    env = {"RESTIC_REPOSITORY": config["PITR_OFFSITE_REPOSITORY"], "RESTIC_PASSWORD": config["PITR_OFFSITE_PASSWORD"],
           "RESTIC_REST_USERNAME": config["PITR_OFFSITE_REST_USER"],
           "RESTIC_REST_PASSWORD": config["PITR_OFFSITE_REST_PASSWORD"],
           "RESTIC_CACERT": config["PITR_OFFSITE_CACERT"], "RESTIC_CACHE_DIR": "/tmp/restic-cache-test"}
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    return host.run(f"runuser -u barman -- env {assignments} timeout 120 restic {' '.join(args)}")


def snapshots(host):
    listed = restic(host, "snapshots", "--json", "--no-lock")
    assert listed.rc == 0, listed.stderr
    return json.loads(listed.stdout)


def sample(host, filename, name):
    text = host.file(f"{TEXTFILE}/{filename}").content_string
    found = re.search(rf'^{name}\{{server="{SERVER}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def sql(host, statement):
    container = compose_container(host, "forge-pitr", "db")
    return host.check_output(f"docker exec -i {container} {PSQL} -Atc {shlex.quote(statement)}")


def test_the_deploy_made_the_repository_copied_and_checked_it(host):
    assert sample(host, f"infer_forge_pitr_offsite_{SERVER}.prom", "infer_forge_pitr_offsite_last_run_success") == 1
    assert sample(host, f"infer_forge_pitr_offsite_check_{SERVER}.prom",
                  "infer_forge_pitr_offsite_check_last_run_success") == 1
    assert snapshots(host), "no snapshot after the deploy"
    state = json.loads(host.check_output(f"cat /var/lib/barman/infer-forge-reports/pitr_offsite_{SERVER}.json"))
    assert state["repository"] == REPOSITORY and len(state["repository_id"]) == 64
    cron = host.file("/etc/cron.d/infer-forge-pitr").content_string
    assert re.search(r"^20 \* \* \* \* barman PITR_CONFIG=/etc/infer-forge/pitr.env \S+/forge pitr offsite >>", cron,
                     re.M)
    assert re.search(r"^0 6 \* \* 6 barman PITR_CONFIG=\S+ \S+/forge pitr offsite-check >>", cron, re.M)
    config = host.file("/etc/infer-forge/pitr.env")
    assert config.user == "barman" and config.mode == 0o600
    # The NAS: rest-server append-only with private repositories over TLS, its data rest-server's alone.
    server = nas()
    arguments = server.check_output("cat /proc/$(pgrep -f restic-rest-server | head -1)/cmdline | tr '\\0' ' '")
    for flag in ("--append-only", "--private-repos", "--tls"):
        assert flag in arguments
    directory = server.file(NAS_REPOSITORY_DIR)
    assert directory.user == "restic-rest-server" and server.file("/srv/infer-forge-pitr").mode == 0o700


def test_the_nas_holds_ciphertext_only_and_never_the_repository_password(host):
    marker = f"gdpr-marker-{uuid.uuid4().hex}"
    sql(host, "CREATE TABLE IF NOT EXISTS pitr_marks (name text PRIMARY KEY)")
    sql(host, f"INSERT INTO pitr_marks VALUES ('{marker}')")  # noqa: S608 - a uuid we made
    host.check_output(f"runuser -u barman -- barman switch-wal --force --archive {SERVER}")
    listed = json.loads(host.check_output(f"runuser -u barman -- barman -f json list-backups {SERVER}"))[SERVER]
    done = sum(1 for backup in listed if backup["status"] == "DONE")
    copied = forge(host, "offsite")
    assert copied.rc == 0, copied.stderr
    assert re.search(rf"^Off-site PITR copy OK: {SERVER} -> {re.escape(REPOSITORY)}: snapshot [0-9a-f]{{8}}: "
                     rf"{done} base backup\(s\) and the WAL, \d+ new of \d+ files, ",
                     copied.stdout, re.M), copied.stdout
    # The control: Barman's own WAL holds the row in clear, so a grep would find it if it were sent so.
    assert host.run(f"grep -rla {marker} /var/lib/barman/{SERVER}/wals").stdout.strip()
    server = nas()
    assert server.run(f"grep -rla {marker} /srv/infer-forge-pitr").rc == 1
    assert server.run("grep -rlaF pitr-repository-password /srv /etc /var/log /root").rc == 1


def test_the_barman_hosts_own_login_cannot_delete_a_snapshot(host):
    assert forge(host, "offsite").rc == 0  # two snapshots at least, so a prune would have one to remove
    before = snapshots(host)
    assert len(before) >= 2
    oldest = before[0]["id"]
    forgot = restic(host, "forget", oldest)
    # restic says so on stderr but exits 0: the proof is the snapshot still listed.
    assert "403" in forgot.stderr
    pruned = restic(host, "forget", "--keep-last", "1", "--prune")
    assert pruned.rc != 0 or "403" in pruned.stderr
    assert [s["id"] for s in snapshots(host)][:len(before)] == [s["id"] for s in before]
    # Nor can it reach another login's repository.
    config = dict(line.split("=", 1) for line in host.file("/etc/infer-forge/pitr.env").content_string.splitlines()
                  if line.startswith("PITR_OFFSITE_REST_"))
    other = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert /etc/infer-forge/pitr-offsite-ca.pem "
                     f"-u pitr-barman:{config['PITR_OFFSITE_REST_PASSWORD']} https://pitr-nas:8000/someone-else/config")
    assert other.stdout in ("401", "403"), other.stdout


def test_a_damaged_pack_on_the_nas_fails_the_check_in_one_line_and_the_metric_says_so(host):
    server = nas()
    pack = server.check_output(f"find {NAS_REPOSITORY_DIR}/data -type f -size +1k | sort | head -1")
    server.check_output(f"cp -p {pack} /root/pack.good && printf 'X' | dd of={pack} bs=1 seek=200 conv=notrunc")
    try:
        checked = forge(host, "offsite-check", PITR_OFFSITE_CHECK_SUBSET="100%")
        assert checked.rc == 1
        lines = checked.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"FAIL: off-site PITR check of {SERVER}: restic check found "
                                                       "the repository damaged: "), checked.stdout
        assert sample(host, f"infer_forge_pitr_offsite_check_{SERVER}.prom",
                      "infer_forge_pitr_offsite_check_last_run_success") == 0
        # The last success is kept: the alert says since when nothing was proved.
        assert sample(host, f"infer_forge_pitr_offsite_check_{SERVER}.prom",
                      "infer_forge_pitr_offsite_check_last_success_timestamp_seconds") is not None
    finally:
        server.check_output(f"cp -p /root/pack.good {pack}")
    again = forge(host, "offsite-check")
    assert again.rc == 0 and again.stdout.startswith(f"PASS: off-site PITR check of {SERVER}: "), again.stdout


def test_a_nas_with_another_certificate_gets_nothing(host):
    host.check_output("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /tmp/other.key "
                      "-out /tmp/other.pem -days 1 -subj /CN=pitr-nas -addext subjectAltName=DNS:pitr-nas "
                      "2>/dev/null && chmod 0644 /tmp/other.pem")
    before = len(snapshots(host))
    started = time.monotonic()
    refused = forge(host, "offsite", PITR_OFFSITE_CACERT="/tmp/other.pem")
    assert refused.rc == 1 and time.monotonic() - started < 60
    assert refused.stderr.strip() == (
        f"ERROR: off-site PITR copy of {SERVER} failed: the NAS at pitr-nas:8000 does not present the pinned "
        "certificate (self-signed certificate); nothing was sent"), refused.stderr
    assert sample(host, f"infer_forge_pitr_offsite_{SERVER}.prom", "infer_forge_pitr_offsite_last_run_success") == 0
    assert len(snapshots(host)) == before


def test_a_wrong_password_is_one_line_and_adds_nothing(host):
    before = len(snapshots(host))
    login = forge(host, "offsite", PITR_OFFSITE_REST_PASSWORD="not-the-password")
    assert login.rc == 1 and login.stderr.strip() == (
        f"ERROR: off-site PITR copy of {SERVER} failed: cannot open the off-site repository: the NAS refused the "
        "REST login 'pitr-barman' (401); check PITR_OFFSITE_REST_PASSWORD"), login.stderr
    key = forge(host, "offsite", PITR_OFFSITE_PASSWORD="not-the-repository-password")
    assert key.rc == 1 and key.stderr.strip() == (
        f"ERROR: off-site PITR copy of {SERVER} failed: cannot open the off-site repository: the repository password "
        f"does not open {REPOSITORY} (PITR_OFFSITE_PASSWORD)"), key.stderr
    assert "not-the" not in login.stdout + login.stderr + key.stdout + key.stderr
    assert len(snapshots(host)) == before


def test_a_vanished_repository_is_reported_and_not_made_again(host):
    server = nas()
    server.check_output(f"mv {NAS_REPOSITORY_DIR} /srv/infer-forge-pitr-aside")
    try:
        lost = forge(host, "offsite --init")
        assert lost.rc == 1
        assert re.fullmatch(rf"ERROR: the off-site repository [0-9a-f]{{10}} that this host made is gone from "
                            rf"{re.escape(REPOSITORY)}; a new one is not made over a lost history \(remove "
                            rf"\S+ to start afresh\)", lost.stderr.strip()), lost.stderr
        assert not server.file(f"{NAS_REPOSITORY_DIR}/config").exists
    finally:
        server.check_output(f"rm -rf {NAS_REPOSITORY_DIR} && mv /srv/infer-forge-pitr-aside {NAS_REPOSITORY_DIR}")
    assert forge(host, "offsite").rc == 0


def test_the_off_site_copy_comes_back_and_recovers_with_barman(host):
    """A lost Barman host, rehearsed: the newest snapshot restored into a new directory, Barman
    pointed at it, and a recovery to latest holds what was filed before the copy, not after."""
    run = uuid.uuid4().hex[:8]
    before, after = f"before the copy {run}", f"after the copy {run}"
    sql(host, "CREATE TABLE IF NOT EXISTS pitr_marks (name text PRIMARY KEY)")
    sql(host, f"INSERT INTO pitr_marks VALUES ('{before}')")  # noqa: S608 - our own marker
    host.check_output(f"runuser -u barman -- barman switch-wal --force --archive {SERVER}")
    assert forge(host, "offsite").rc == 0
    sql(host, f"INSERT INTO pitr_marks VALUES ('{after}')")  # noqa: S608 - our own marker
    target = "/var/lib/barman/offsite-restore"
    host.run(f"rm -rf {target}")
    # Into a directory with anything in it, nothing is written.
    host.check_output(f"runuser -u barman -- mkdir -p {target} && runuser -u barman -- touch {target}/keep")
    refused = forge(host, f"offsite-restore {target}")
    assert refused.rc == 1 and "is not an empty directory; a restore never writes over anything" in refused.stderr
    assert host.check_output(f"ls -A {target}") == "keep"
    host.check_output(f"rm -rf {target}")
    restored = forge(host, f"offsite-restore {target}")
    assert restored.rc == 0, restored.stderr
    home = f"{target}/var/lib/barman"
    assert re.search(rf"every file verified; Barman's directory is at {home}/{SERVER}$", restored.stdout.strip())
    config = f"{target}/barman.conf"
    host.check_output(f"runuser -u barman -- sh -c 'printf \"[barman]\\nbarman_home = {home}\\nbarman_user = barman\\n"
                      f"log_file = {target}/barman.log\\n\\n\" > {config} && "
                      f"grep -v \"^;\" /etc/barman.d/{SERVER}.conf >> {config}'")
    host.check_output(f"runuser -u barman -- barman -c {config} rebuild-xlogdb {SERVER}")
    recovered = forge(host, "recover", PITR_BARMAN_CONFIG=config, PITR_SCRATCH_ROOT=f"{target}/scratch",
                      PITR_SCRATCH_PORT="55433")
    assert recovered.rc == 0, recovered.stdout + recovered.stderr
    [data] = re.findall(r"into (\S+);", recovered.stdout)
    socket_dir = os.path.join(os.path.dirname(data), "socket")
    try:
        query = "SELECT name FROM pitr_marks ORDER BY name"
        marks = host.check_output(f"runuser -u barman -- psql -X -h {socket_dir} -p 55433 -U infer -d infer_forge "
                                  f"-Atc '{query}'").splitlines()
    finally:
        host.run(f"runuser -u barman -- /usr/lib/postgresql/17/bin/pg_ctl -D {data} -m fast -w stop")
        host.run(f"rm -rf {target}")
    assert before in marks and after not in marks, marks
    print(f"\nOff-site copy restored and recovered: {restored.stdout.strip()}")


def test_a_link_barman_planted_as_its_report_directory_hands_root_nothing(host):
    """The report directory is in barman's home: root creating it there would follow a link
    barman put in its place and give barman what it points to."""
    reports = "/var/lib/barman/infer-forge-reports"
    host.check_output(f"mv {reports} {reports}.real && runuser -u barman -- ln -s /etc/cron.d {reports}")
    try:
        run = playbook("pitr.yml", "--limit", "pitr-barman")
        target = host.file("/etc/cron.d")
        assert (target.user, target.group, target.mode) == ("root", "root", 0o755), run.stdout[-2000:]
        assert run.returncode != 0 and "Create the PITR report directory, as barman" in run.stdout
    finally:
        host.check_output(f"rm -f {reports} && mv {reports}.real {reports}")



def test_a_login_no_host_holds_any_more_is_removed_from_the_nas_and_the_others_kept(host):
    """A retired or renamed Barman host keeps no way into the NAS: the logins file is the role's
    alone and holds only the inventory's logins (its repository stays, append-only)."""
    server = nas()
    logins = "/etc/restic-rest-server/infer-forge.htpasswd"
    server.check_output(f"printf %s retired-secret | htpasswd -B -i {logins} retired-barman")
    run = playbook("pitr.yml", "--limit", "pitr-nas")
    assert run.returncode == 0, run.stdout[-3000:]
    names = [line.split(":", 1)[0] for line in server.file(logins).content_string.splitlines() if line]
    assert names == ["pitr-barman"]
    assert "(item=retired-barman)" in run.stdout.split("Remove the logins no host holds any more", 1)[1]
    # The kept login was left as it was, and still copies.
    assert forge(host, "offsite").rc == 0
    again = playbook("pitr.yml", "--limit", "pitr-nas")
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]


def test_the_nas_prunes_what_is_older_than_its_window_and_the_barman_host_still_cannot(host):
    """Issue 32 item 7: an erasure must reach the off-site PITR copy within its retention, yet the
    Barman host can never delete. The NAS's prune, run on the NAS as rest-server's user, dates each
    snapshot by when it arrived there: one that arrived 40 days ago (its file's time set back, as
    the oldest copy holding an erased row would be) is forgotten and its data pruned; ones whose
    client wrote 2026-09-01 or 2099 into them (what a compromised Barman host could write, and
    restic's own --keep-within would count from) arrived now and stay, as does every real copy.
    The repository still checks, and a second prune changes nothing."""
    made = {}
    for tag, when in (("erasure-test", "2026-11-30 03:00:00"), ("forged-old", "2026-09-01 03:00:00"),
                      ("forged-future", "2099-01-01 00:00:00")):
        result = restic(host, "backup", "--no-cache", "--host", "prune-test", "--tag", tag, "--time", f"'{when}'",
                        "/etc/hostname")
        assert result.rc == 0, result.stderr
    before = snapshots(host)
    for snapshot in before:
        for tag in snapshot.get("tags", []):
            made[tag] = snapshot["id"]
    nas().check_output(f"touch -d '40 days ago' {NAS_REPOSITORY_DIR}/snapshots/{made['erasure-test']}")
    pruned = playbook("pitr_offsite.yml", "-e", "pitr_offsite_action=prune")
    assert pruned.returncode == 0, pruned.stdout[-3000:]
    assert re.search(r"pruned 1 snapshot\(s\) older than 30 days", pruned.stdout), pruned.stdout[-3000:]
    after = {s["id"] for s in snapshots(host)}
    assert made["erasure-test"] not in after
    # Every other snapshot stays, the forged ones included (an hourly copy may add one meanwhile).
    assert {s["id"] for s in before} - {made["erasure-test"]} <= after
    checked = forge(host, "offsite-check")
    assert checked.rc == 0, checked.stdout + checked.stderr
    again = playbook("pitr_offsite.yml", "-e", "pitr_offsite_action=prune")
    assert again.returncode == 0 and re.search(r"pitr-nas\s*: ok=\d+\s+changed=0", again.stdout), again.stdout[-2000:]
    # The NAS held the repository password for the run only.
    assert nas().run("grep -rlaF pitr-repository-password /srv /etc /var/log /root /tmp").rc == 1
