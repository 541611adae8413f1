"""A Docker Compose service's running container, found the way Compose itself finds it:
by the project and service labels it puts on every container, never by a remembered name
(a recreated container keeps its labels, not necessarily its name)."""

import json
import subprocess

from .errors import ForgeError, last_line
from .pgconn import tool_env

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def _docker(args, timeout=30):
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
                              env=tool_env())
    except FileNotFoundError:
        raise ForgeError("docker not found on this host (Debian: docker-cli or docker.io)") from None
    except subprocess.TimeoutExpired:
        raise ForgeError(f"docker {args[0]} did not answer within {timeout} s") from None
    if proc.returncode != 0:
        raise ForgeError(f"docker {args[0]} failed: {last_line(proc.stderr) or f'exit {proc.returncode}'}")
    return proc.stdout


def running_container(project, service, hint=None):
    """The name of the one running container of ``service`` in Compose project ``project``."""
    names = _docker(["ps", "--filter", f"label={PROJECT_LABEL}={project}", "--filter",
                     f"label={SERVICE_LABEL}={service}", "--format", "{{.Names}}"]).split()
    fix = f"start it (docker compose up -d {service})" + (f" or set {hint}" if hint else "")
    if not names:
        raise ForgeError(f"Compose project {project} has no running container of service {service}; {fix}")
    if len(names) > 1:
        raise ForgeError(f"Compose project {project} has {len(names)} running containers of service {service} "
                         f"({', '.join(sorted(names))}); the checks need one")
    return names[0]


def container_environment(name):
    """The environment ``name`` was started with (``docker inspect``: Config.Env), as a dict."""
    raw = _docker(["inspect", "--type", "container", "--format", "{{json .Config.Env}}", name])
    try:
        entries = json.loads(raw)
    except ValueError:
        raise ForgeError(f"docker inspect {name} returned no environment list") from None
    return dict(entry.split("=", 1) for entry in entries or [] if "=" in entry)
