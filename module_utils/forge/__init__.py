"""INFER FORGE backup, restore and health engine.

Plain Python with no Ansible import: the Ansible modules in ``library/`` and
the on-host commands that cron runs (``scripts/backup_db.sh``) both use it.
Runs on Debian 12's python3 with its packaged psycopg, cryptography and
zstandard, and on current releases of those libraries.
"""

__version__ = "0.1.0"
