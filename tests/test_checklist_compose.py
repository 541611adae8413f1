"""Checklist items 1 and 2 against a Compose deployment: what the running app container
was started with is what the app sees, so that is what counts, and an env file changed
since the container started is called out. Real containers on this machine's Docker
engine, labelled as Compose labels its own (the molecule `compose` scenario runs the
same module against a real `docker compose` project)."""

import json
import os
import uuid

import pytest

from forge.checklist import Checklist

from helpers import docker, require_docker_image

IMAGE = "infer-forge-stack:latest"
DSN = "https://0123456789abcdef@o1.ingest.sentry.io/4242"
OTHER_DSN = "https://fedcba9876543210@o1.ingest.sentry.io/4343"



@pytest.fixture(scope="module")
def docker_image():
    require_docker_image(IMAGE)
    return IMAGE


@pytest.fixture
def app_service(docker_image):
    """Start a container labelled as service `app` of a fresh Compose project, with the given environment."""
    project = f"forge-checklist-{uuid.uuid4().hex[:8]}"
    started = []

    def start(**environment):
        name = f"{project}-app-1"
        args = ["run", "-d", "--name", name, "--label", f"com.docker.compose.project={project}",
                "--label", "com.docker.compose.service=app"]
        for key in environment:
            args += ["-e", key]
        docker(*args, docker_image, "sleep", "infinity", env=dict(os.environ, **environment))
        started.append(name)
        return project, name

    yield start
    for name in started:
        docker("rm", "-f", name, check=False)


def check(number, **settings):
    return Checklist(settings).run(number)


def test_item_1_reads_the_dsn_the_running_app_container_has(app_service, tmp_path):
    project, name = app_service(SENTRY_DSN=DSN, ENVIRONMENT="production", DATABASE_PASSWORD="not-for-the-report")
    env_file = tmp_path / ".env"
    env_file.write_text(f"SENTRY_DSN={DSN}\nENVIRONMENT=production\n")
    result = check(1, env_file=str(env_file), app_compose_project=project)
    assert result["status"] == "PASS", result
    assert result["evidence"] == [
        f"SENTRY_DSN=https://***@o1.ingest.sentry.io/4242 in the running container {name} "
        f"(service app of Compose project {project})"]
    # Neither the DSN's key nor any other variable of the container reaches the result.
    text = json.dumps(result)
    assert "0123456789abcdef" not in text and "not-for-the-report" not in text
    assert check(2, env_file=str(env_file), app_compose_project=project)["status"] == "PASS"


def test_items_1_and_2_fail_on_what_the_container_runs_with_even_when_the_env_file_is_right(app_service, tmp_path):
    project, name = app_service(ENVIRONMENT="staging")
    env_file = tmp_path / ".env"
    env_file.write_text(f"SENTRY_DSN={DSN}\nENVIRONMENT=production\n")
    first = check(1, env_file=str(env_file), app_compose_project=project)
    assert first["status"] == "FAIL"
    assert first["evidence"][0] == (f"SENTRY_DSN is empty or missing in the running container {name} "
                                    f"(service app of Compose project {project}) (errors reach no one)")
    assert any(f"{env_file} has SENTRY_DSN" in line and "docker compose up -d app" in line
               for line in first["evidence"]), first["evidence"]
    second = check(2, env_file=str(env_file), app_compose_project=project, environment="production")
    assert second["status"] == "FAIL"
    assert second["evidence"][0] == (f"ENVIRONMENT=staging in the running container {name} "
                                     f"(service app of Compose project {project})")
    assert any(f"{env_file} has ENVIRONMENT=production" in line for line in second["evidence"]), second["evidence"]


def test_item_1_warns_when_the_env_file_changed_since_the_container_started(app_service, tmp_path):
    project, _name = app_service(SENTRY_DSN=DSN, ENVIRONMENT="production")
    env_file = tmp_path / ".env"
    env_file.write_text(f"SENTRY_DSN={OTHER_DSN}\nENVIRONMENT=production\n")
    result = check(1, env_file=str(env_file), app_compose_project=project)
    assert result["status"] == "WARN", result
    assert "fedcba9876543210" not in json.dumps(result)
    assert any("another SENTRY_DSN" in line and "docker compose up -d app" in line for line in result["evidence"])


def test_no_running_app_container_fails_in_one_line_that_says_how_to_start_it(docker_image, tmp_path):
    project = f"forge-checklist-{uuid.uuid4().hex[:8]}"
    result = check(1, env_file=str(tmp_path / ".env"), app_compose_project=project)
    assert result["status"] == "FAIL"
    assert result["evidence"] == [f"Compose project {project} has no running container of service app; "
                                  "start it (docker compose up -d app) or set checklist_app_compose_project"]
