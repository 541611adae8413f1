# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options the forge modules share, documented once. The values (types, defaults) are the
engine's declarations in module_utils/forge/settings.py; tests/test_settings.py fails when
these docs or a module's argument spec differ from them."""

from __future__ import annotations


class ModuleDocFragment:
    # The PostgreSQL connection of forge_backup and forge_restore (forge_health takes the same
    # names as aliases of its database_* options).
    CONNECTION = r"""
options:
  login_host:
    description: PostgreSQL host (C(POSTGRES_HOST)).
    type: str
    default: localhost
  port:
    description: PostgreSQL port (C(POSTGRES_PORT)).
    type: int
    default: 5432
  login_user:
    description:
      - Role to connect as (C(POSTGRES_USER)).
      - A restore or drill needs C(CREATEDB) to create its target and scratch databases.
    type: str
  login_password:
    description:
      - Password of O(login_user) (C(POSTGRES_PASSWORD)).
      - Passed to C(pg_dump), C(psql) and C(pg_restore) through a private passfile in memory, never on a
        command line.
    type: str
"""

    # Where the backups are, and the passphrase given as a value (forge_backup, forge_restore,
    # forge_offsite). What the passphrase file does differs per module, so each documents its own.
    BACKUP_STORE = r"""
options:
  backup_dir:
    description:
      - The backup directory (C(BACKUP_DIR)), mode 0700; a symlink is refused.
      - forge_backup creates it when missing.
    type: path
    default: /backups
  passphrase:
    description:
      - The backup passphrase itself, for example from Ansible Vault, instead of O(passphrase_file).
      - It stays in the module's memory and wins over O(passphrase_file); no file is written for it.
    type: str
  retired_passphrases_file:
    description:
      - Key rotation. File of retired passphrases, one per line, mode 0600, never a link
        (C(BACKUP_RETIRED_PASSPHRASES_FILE)).
      - A retired passphrase proves and decrypts the backups it made, so they restore, drill, leave by retention and
        go off site like new ones; it never signs or encrypts a new backup.
    type: path
  retired_passphrases:
    description:
      - Retired passphrases themselves, for example from Ansible Vault, beside O(retired_passphrases_file).
    type: list
    elements: str
    default: []
"""
