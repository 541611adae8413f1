"""The Python libraries a job needs on the host that runs it.

Checked before the job starts, so a host without one is told which, the way Ansible
says it (the modules pass the name to missing_required_lib), instead of meeting an
ImportError halfway through a run. Plain Python: no Ansible import."""

import importlib.util

# What connects to PostgreSQL needs psycopg (Debian: python3-psycopg); the Redis check, redis.
POSTGRES = "psycopg"
REDIS = "redis"


def first_missing(*names):
    """The first of ``names`` this Python cannot import, or None."""
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None
