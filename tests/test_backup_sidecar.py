"""The Compose sidecar's entrypoint (roles/backup/templates/docker-compose.backup.yml.j2), run
as rendered in a real container: cron starts only when the backup user inside has the uid
that owns the backups on the host, and a mismatch stops it in one line instead of every
night's backup failing on EACCES."""

import time
import uuid

import pytest
import yaml

from helpers import docker, render, require_docker_image

IMAGE = "infer-forge-debian12:latest"



@pytest.fixture(scope="module")
def entrypoint():
    require_docker_image(IMAGE)
    compose = yaml.safe_load(render("backup", "docker-compose.backup.yml.j2", backup_sidecar_uid="4242",
                                    backup_sidecar_gid="4242", backup_compose_project="forge",
                                    backup_compose_network="forge_default", backup_compose_sidecar_textfile_dir="",
                                    backup_compose_sidecar_image=IMAGE))
    command = compose["services"]["backup"]["entrypoint"]
    # Compose turns $$ into $ before the shell sees it.
    return [part.replace("$$", "$") for part in command]


@pytest.fixture
def container():
    names = []

    def run(user, uid, gid):
        name = f"forge-sidecar-test-{uuid.uuid4().hex[:8]}"
        names.append(name)
        return name, ["run", "--name", name, "-e", f"BACKUP_USER={user}", "-e", f"BACKUP_UID={uid}",
                      "-e", f"BACKUP_GID={gid}"]

    yield run
    for name in names:
        docker("rm", "-f", name, check=False)


def _uid_in_image(user):
    return docker("run", "--rm", IMAGE, "id", "-u", user).stdout.strip()


def test_a_backup_user_with_another_uid_in_the_image_stops_the_sidecar_in_one_line(entrypoint, container):
    image_uid = _uid_in_image("deploy")
    name, args = container("deploy", "4242", "4242")
    result = docker(*args, "--entrypoint", entrypoint[0], IMAGE, *entrypoint[1:], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"ERROR: user deploy has uid {image_uid} in this image, but uid 4242 owns the backups on the host; "
        "use an image without that user or give backup_user the same uid; cron was not started"]
    assert "cron" not in docker("logs", name).stdout


def test_a_matching_or_new_backup_user_starts_cron(entrypoint, container):
    # The image's own user with the host's uid; a new user; a new user whose name is taken by a group.
    for user, uid in (("deploy", _uid_in_image("deploy")), ("infer", "4242"), ("adm", "4243")):
        name, args = container(user, uid, uid)
        docker(*args, "-d", "--entrypoint", entrypoint[0], IMAGE, *entrypoint[1:])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if docker("exec", name, "pgrep", "-x", "cron", check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"cron did not start for {user} ({uid}): {docker('logs', name, check=False).stderr}")
        assert docker("exec", name, "id", "-u", user).stdout.strip() == uid
        assert docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
