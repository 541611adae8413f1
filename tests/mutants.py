"""Named mutants of the engine's core promises, for scripts/mutation_check.py.

Each mutant breaks one guarantee the README makes, the way a careless change
would. ``edits`` are (file, text, replacement); each text must appear exactly
once in its file, so a mutant goes stale loudly when the code moves. ``tests``
are the pytest node ids that must fail against the mutant: the promise's
guards. The stage fails when any mutant survives its tests.
"""

BACKUP = "module_utils/forge/backup.py"
RESTORE = "module_utils/forge/restore.py"
CATALOG = "module_utils/forge/catalog.py"
SIGNING = "module_utils/forge/signing.py"
COMPRESS = "module_utils/forge/compress.py"

MUTANTS = [
    {
        "name": "write-to-the-final-name",
        "promise": "a backup appears under its final name only when it is complete",
        "edits": [(BACKUP,
                   'partial_path = os.path.join(options.backup_dir, f".{name}.partial-{os.getpid()}")',
                   "partial_path = os.path.join(options.backup_dir, name)")],
        "tests": ["tests/test_backup_atomicity.py::test_a_killed_engine_leaves_only_a_hidden_partial_and_the_earlier_backup_untouched"],
    },
    {
        "name": "skip-the-data-fsync",
        "promise": "the data is on disk before the file takes its final name",
        "edits": [(BACKUP, "                os.fsync(out.fileno())\n", "")],
        "tests": ["tests/test_backup_atomicity.py::test_the_data_is_fsynced_before_its_rename_and_the_directory_after_it"],
    },
    {
        "name": "skip-the-directory-fsync",
        "promise": "the rename itself survives a power cut",
        "edits": [(BACKUP,
                   "            os.rename(partial_path, final_path)\n            fsync_dir(options.backup_dir)\n",
                   "            os.rename(partial_path, final_path)\n")],
        "tests": ["tests/test_backup_atomicity.py::test_the_data_is_fsynced_before_its_rename_and_the_directory_after_it"],
    },
    {
        "name": "reverse-gzip-members",
        "promise": "parallel gzip writes its members in the dump's order",
        # Deterministic: every member goes to the front, whatever the timing of the workers.
        "edits": [(COMPRESS, "self._pending.append(self._pool.submit(_gzip_member, data, self.level))",
                   "self._pending.appendleft(self._pool.submit(_gzip_member, data, self.level))")],
        "tests": ["tests/test_backup_script.py::test_a_parallel_gzip_backup_of_many_members_restores_with_the_runbooks_gunzip_psql"],
    },
    {
        "name": "skip-the-legacy-hmac-check",
        "promise": "a version 1 file is restored only when its HMAC proves it",
        "edits": [(CATALOG, "            if hmac.compare_digest(mac.hexdigest(), self.legacy_hmac):",
                   "            if True:")],
        "tests": [],
    },
    {
        "name": "skip-the-manifest-authentication",
        "promise": "a manifest counts only when the passphrase's key signed it",
        "edits": [(SIGNING, "    if not hmac.compare_digest(value.encode(), expected.encode()):\n"
                            "        return SIGNATURE_MISMATCH\n", "")],
        "tests": [],
    },
    {
        "name": "drop-the-target-before-the-restore-completes",
        "promise": "a failed restore leaves the existing target exactly as it was",
        "edits": [(RESTORE, "                self._drop_stale_sides(control, target)\n",
                   "                self._drop_stale_sides(control, target)\n"
                   "                if plan != 'new':\n"
                   "                    self._drop(control, target)\n"
                   "                    plan = 'new'\n")],
        "tests": [],
    },
    {
        "name": "skip-the-row-count-comparison",
        "promise": "a restore whose row counts differ from the snapshot's never goes live",
        "edits": [(RESTORE, '        expected = (backup.manifest or {}).get("snapshot_row_counts")\n',
                   '        return\n        expected = (backup.manifest or {}).get("snapshot_row_counts")\n')],
        "tests": [],
    },
    {
        "name": "skip-the-sha256-check",
        "promise": "a changed byte anywhere in a backup is refused",
        "edits": [(RESTORE, "    if expected and not hmac.compare_digest(digest.hexdigest(), expected):",
                   "    if False:")],
        "tests": [],
    },
    {
        "name": "retention-counts-a-manifest-less-file",
        "promise": "retention keeps min_keep backups that are proven good",
        "edits": [(CATALOG, "        return self.problem is None and self.manifest is not None\n",
                   "        return True\n")],
        "tests": ["tests/test_retention.py::test_min_keep_counts_only_backups_proven_good", "tests/test_retention.py::test_files_without_a_valid_manifest_are_never_deleted"],
    },
    {
        "name": "min-keep-counts-every-file",
        "promise": "min_keep counts only backups proven good, never junk beside them",
        "edits": [(CATALOG, "    for backup in good[:min_keep]:", "    for backup in backups[:min_keep]:")],
        "tests": ["tests/test_retention.py::test_min_keep_counts_only_backups_proven_good"],
    },
    {
        "name": "environment-loses-to-the-config-file",
        "promise": "a variable set in the environment wins over BACKUP_CONFIG",
        "edits": [("module_utils/forge/cli.py",
                   '    config.update({key: value for key, value in environ.items() if value != ""})',
                   '    config = {**{key: value for key, value in environ.items() if value != ""}, **config}')],
        "tests": ["tests/test_backup_config.py::test_a_variable_set_in_the_environment_wins_over_the_config_file"],
    },
    {
        "name": "skip-the-free-space-check",
        "promise": "a backup that cannot fit is refused before it starts",
        "edits": [(BACKUP, "        if not self.options.space_check:\n            return\n",
                   "        return\n")],
        "tests": ["tests/test_backup_script.py::test_free_space_is_checked_before_dumping", "tests/test_backup_script.py::test_free_space_is_estimated_from_the_last_backup_and_a_refused_run_keeps_it"],
    },
    {
        "name": "ignore-the-backup-lock",
        "promise": "two backups of one database never run at once",
        "edits": [(BACKUP,
                   'with DirectoryLock(lock_path, self.options.lock_wait, what=f"backup of {self.settings.database}",\n'
                   '                               log=self.log):',
                   "with contextlib.nullcontext():"),
                  (BACKUP, "import datetime\n", "import contextlib\nimport datetime\n")],
        "tests": ["tests/test_backup_script.py::test_a_second_backup_of_the_same_database_fails_in_one_line_and_the_first_completes", "tests/test_backup_script.py::test_with_lock_wait_a_second_backup_starts_its_dump_only_after_the_first_is_complete"],
    },
    {
        "name": "pg-dump-failure-is-success",
        "promise": "pg_dump's non-zero exit fails the backup",
        "edits": [(BACKUP, "    if returncode != 0:\n", "    if False:\n")],
        "tests": ["tests/test_backup_script.py::test_a_complete_dump_from_a_pg_dump_that_exits_1_is_not_kept"],
    },
    {
        "name": "detail-lines-reach-sentry",
        "promise": "row values in DETAIL/CONTEXT/LINE lines stay on the host",
        "edits": [(RESTORE,
                   "context = [item for item in map(statement_line, lines[index + 1:index + 3]) if item]",
                   "context = lines[index + 1:index + 3]")],
        "tests": ["tests/test_restore_safety.py::test_row_values_never_reach_the_message_or_sentry"],
    },
    {
        "name": "psql-without-restricted-mode",
        "promise": "no dump can run a shell command through psql",
        "edits": [(RESTORE, "            restrict = backup.dump_format == \"plain\"\n",
                   "            restrict = False\n")],
        "tests": [],
    },
    {
        "name": "health-checks-one-after-another",
        "promise": "three hanging services cost one timeout, not three",
        "edits": [("module_utils/forge/health.py", "        thread.start()\n        threads.append((name, thread))\n",
                   "        thread.start()\n        thread.join()\n        threads.append((name, thread))\n")],
        "tests": ["tests/test_health.py::test_everything_down_is_checked_at_once_each_within_its_timeout"],
    },
    {
        "name": "child-tools-inherit-the-password-variable",
        "promise": "pg_dump and psql get the password only as a 0600 file descriptor, never in their environment",
        "edits": [("module_utils/forge/pgconn.py",
                   'if not k.startswith("PG") and not SECRET_NAME.search(k)}', 'if not k.startswith("PG")}')],
        "tests": ["tests/test_backup_script.py::test_secrets_never_appear_in_the_process_list"],
    },
]
