"""Rotating the backup key on a deployed host, by the steps of docs/security.md as written
(the lab's inventory in place of production's, the vault's two values given as extra vars).

Runs after test_backup.py, whose scheduled run left backups under the scenario's passphrase:
after the rotation a new backup is signed with the new key, the old backup still drills PASS
through playbooks/restore_drill.yml, the cron entry's own command still runs, and the metrics
name the backups under the retired key."""

import json
import os
import re
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import REPO, ansible_env, task_result  # noqa: E402

OLD = "molecule backup passphrase"  # molecule.yml's backup_passphrase
NEW = "molecule rotated passphrase, the one for 2027"
TEXTFILE = "/var/lib/infer-forge-metrics/backup/infer_forge_backup_infer_forge.prom"


def documented_steps():
    """The ansible-playbook lines of security.md's "Rotating the backup key", as written."""
    with open(os.path.join(REPO, "docs", "security.md")) as handle:
        page = handle.read()
    block = page.split("## Rotating the backup key\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in commands if line.startswith("ansible-playbook ")]


def run_step(words, old_backup, tmp_path):
    assert words[:3] == ["ansible-playbook", "-i", "inventories/production"] and "--ask-vault-pass" in words, words
    words = [word for word in words if word != "--ask-vault-pass"]  # the lab's inventory has no vault
    words[2] = os.environ["MOLECULE_INVENTORY_FILE"]
    words = [word.replace("<old-backup-file>", old_backup).replace("<database>", "infer_forge") for word in words]
    vault = tmp_path / "vault.json"
    vault.write_text(json.dumps({"backup_passphrase": NEW, "backup_retired_passphrases": [OLD]}))
    return subprocess.run(words + ["-e", f"@{vault}"], capture_output=True, text=True, cwd=REPO, timeout=900,
                          env=ansible_env(ANSIBLE_STDOUT_CALLBACK="json"))


def key_of(host, path):
    return json.loads(host.file(path + ".manifest.json").content_string)["signature"]["key_id"]


def newest(host):
    names = host.check_output("ls /backups").split()
    return sorted(n for n in names if re.fullmatch(r"infer_forge_\d{8}_\d{6}\.sql\.gz\.enc", n))[-1]


def metric(host, name):
    for line in host.file(TEXTFILE).content_string.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_documented_rotation_keeps_old_backups_drilling_pass_and_signs_new_ones_with_the_new_key(
        host, tmp_path):
    old_backup = newest(host)
    old_key = key_of(host, f"/backups/{old_backup}")
    deploy, backup, drill = documented_steps()
    assert "deploy.yml" in deploy[3] and "backup.yml" in backup[3] and "restore_drill.yml" in drill[3]

    deployed = run_step(deploy, old_backup, tmp_path)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr
    retired = host.file("/etc/infer-forge/backup-retired.pass")
    assert (retired.user, retired.mode) == ("infer", 0o600)
    assert retired.content_string == OLD + "\n"
    assert NEW not in deployed.stdout and OLD not in deployed.stdout  # no_log

    backed_up = run_step(backup, old_backup, tmp_path)
    assert backed_up.returncode == 0, backed_up.stdout[-3000:] + backed_up.stderr
    made = newest(host)
    assert made != old_backup and key_of(host, f"/backups/{made}") != old_key

    drilled = run_step(drill, old_backup, tmp_path)
    assert drilled.returncode == 0, drilled.stdout[-3000:] + drilled.stderr
    [result] = task_result(drilled, "results")["results"]  # the loop over backup_databases, one here
    assert result["verdict"] == "PASS" and result["backup"].endswith("/" + old_backup), result

    # The cron entry's own command (the env file names the retired keyring) counts the old ones.
    line = [entry for entry in host.file("/etc/cron.d/infer-forge-backup").content_string.splitlines()
            if "backup-infer_forge.env" in entry and "backup_db.sh" in entry][0]
    run = host.run("su -s /bin/sh infer -c %s", line.split(None, 6)[6])
    assert run.rc == 0, run.stderr
    assert metric(host, "infer_forge_backup_retired_key_backups") >= 1
    assert metric(host, "infer_forge_backup_unproven_backups") == 0
