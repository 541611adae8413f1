"""Named mutants of the engine's core promises, for scripts/mutation_check.py.

Each mutant breaks one guarantee README.md or docs/ make, the way a careless change
would. ``edits`` are (file, text, replacement); each text must appear exactly
once in its file, so a mutant goes stale loudly when the code moves. ``tests``
are the pytest node ids that must fail against the mutant: the promise's
guards. The stage fails when any mutant survives its tests. ``waits`` marks a mutant
whose test sleeps out a deadline, run beside the others. The guarantee matrix
(tests/guarantees.py) adds one generated mutant per format and door cell of its promises.
"""

from guarantees import generated_mutants

BACKUP = "module_utils/forge/backup.py"
RESTORE = "module_utils/forge/restore.py"
VERIFY = "module_utils/forge/verify.py"
CLIENTWATCH = "module_utils/forge/clientwatch.py"
CATALOG = "module_utils/forge/catalog.py"
SIGNING = "module_utils/forge/signing.py"
COMPRESS = "module_utils/forge/compress.py"
FSUTIL = "module_utils/forge/fsutil.py"
PITR_OFFSITE = "module_utils/forge/pitr_offsite.py"
FARSIDE = "module_utils/forge/farside.py"
PITR = "module_utils/forge/pitr.py"
BARMAN = "module_utils/forge/barman.py"
SCRATCH = "module_utils/forge/scratch.py"
WALSTAGE = "module_utils/forge/walstage.py"
PITR_SERVE = "module_utils/forge/pitr_serve.py"
DBCLIENT = "module_utils/forge/dbclient.py"
SETTINGS = "module_utils/forge/settings.py"
OFFSITE = "module_utils/forge/offsite.py"
BOUNDARIES = "tests/test_boundaries.py::"

MUTANTS = [
    {
        "name": "a-nas-with-another-certificate-is-sent-the-pitr-copy",
        "promise": "the off-site PITR copy goes only to the NAS that presents the pinned certificate",
        "edits": [(PITR_OFFSITE, "ssl.create_default_context(cafile=cacert) if cacert else ssl.create_default_context()",
                   "ssl._create_unverified_context()")],
        "tests": ["tests/test_pitr_offsite_engine.py::"
                  "test_the_pinned_certificate_is_taken_and_another_is_refused_before_anything_is_sent"],
    },
    {
        "name": "an-off-site-restore-writes-over-a-directory",
        "promise": "restoring the off-site PITR copy never writes into a directory that holds anything",
        "edits": [(PITR_OFFSITE, "(not os.path.isdir(target) or os.listdir(target))", "not os.path.isdir(target)")],
        "tests": ["tests/test_pitr_offsite_engine.py::test_a_restore_into_a_directory_that_holds_anything_writes_nothing"],
    },
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
        "tests": ["tests/test_backup_script.py::test_a_gzip_backup_restores_with_the_runbooks_gunzip_psql"],
    },
    {
        "name": "a-planted-igzip-is-run",
        "promise": "the engine runs only a root-owned igzip (and restic) nobody else can write to",
        "edits": [(FSUTIL, "info.st_uid == 0 and not info.st_mode & 0o022", "True")],
        "tests": ["tests/test_igzip.py::test_an_igzip_another_user_could_have_replaced_is_not_used",
                  "tests/test_pitr_offsite_engine.py::test_a_restic_another_user_could_have_replaced_is_never_run"],
    },
    {
        "name": "skip-the-legacy-hmac-check",
        "promise": "a version 1 file is restored only when its HMAC proves it",
        "edits": [(CATALOG, "            if hmac.compare_digest(mac.hexdigest(), self.legacy_hmac):",
                   "            if True:")],
        "tests": ["tests/test_signing.py::test_a_version_1_file_is_proven_by_its_hmac_and_refused_without_it", "tests/test_restore_safety.py::test_a_version_1_manifest_is_restored_by_name_only_and_its_hmac_is_checked"],
    },
    {
        "name": "skip-the-manifest-authentication",
        "promise": "a manifest counts only when the passphrase's key signed it",
        "edits": [(SIGNING, "    if not hmac.compare_digest(value.encode(), expected.encode()):\n"
                            "        return SIGNATURE_MISMATCH, their_key\n", "")],
        "tests": ["tests/test_signing.py::test_a_manifest_signed_from_the_documentation_is_accepted_and_any_change_is_refused", "tests/test_restore_safety.py::test_every_manifest_field_is_covered_by_the_signature", "tests/test_restore_safety.py::test_swapped_data_with_a_recomputed_checksum_is_a_changed_manifest_not_a_wrong_passphrase"],
    },
    {
        "name": "drop-the-target-before-the-restore-completes",
        "promise": "a failed restore leaves the existing target exactly as it was",
        "edits": [(RESTORE, "                self._drop_stale_sides(control, target)\n",
                   "                self._drop_stale_sides(control, target)\n"
                   "                if plan != 'new':\n"
                   "                    self._drop(control, target)\n"
                   "                    plan = 'new'\n")],
        "tests": ["tests/test_restore_safety.py::test_forced_restore_failing_in_the_middle_sql_error", "tests/test_restore_safety.py::test_forced_restore_whose_rows_do_not_match_the_manifest_is_never_swapped_in"],
    },
    {
        "name": "skip-the-row-count-comparison",
        "promise": "a restore whose row counts differ from the snapshot's never goes live",
        "edits": [(RESTORE, '        expected = (backup.manifest or {}).get("snapshot_row_counts")\n',
                   '        return\n        expected = (backup.manifest or {}).get("snapshot_row_counts")\n')],
        "tests": ["tests/test_restore_safety.py::test_forced_restore_whose_rows_do_not_match_the_manifest_is_never_swapped_in"],
    },
    {
        "name": "skip-the-sha256-check",
        "promise": "a changed byte anywhere in a backup is refused",
        "edits": [(VERIFY, "    if expected and not hmac.compare_digest(digest.hexdigest(), expected):",
                   "    if False:")],
        "tests": ["tests/test_restore_safety.py::test_a_byte_changed_late_where_only_the_checksum_can_see_it_is_refused", "tests/test_restore_safety.py::test_a_flipped_byte_with_the_manifest_intact_is_damage"],
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
        "tests": ["tests/test_restore_safety.py::test_a_named_unverified_file_may_run_sql_but_never_psql_commands"],
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
                   'env = {k: v for k, v in child_env().items() if not k.startswith("PG")}',
                   'env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}')],
        "tests": ["tests/test_backup_script.py::test_secrets_never_appear_in_the_process_list"],
    },
    {
        "name": "a-newer-bad-backup-is-passed-over-quietly",
        "promise": "a newer backup that is not good fails the drill, although an older one restores",
        "edits": [("module_utils/forge/drill.py",
                   '                result["problems"].insert(0, f"newer backup skipped as not good: {skipped}")\n',
                   "                pass\n")],
        "tests": ["tests/test_drill.py::test_a_newer_broken_backup_fails_the_drill_although_an_older_one_is_good"],
    },
    {
        "name": "the-drill-ignores-keep",
        "promise": "the drill's scratch database is kept only when asked",
        "edits": [("module_utils/forge/drill.py", "False if self.options.keep else self._drop_scratch()",
                   "self._drop_scratch()")],
        "tests": ["tests/test_drill.py::test_the_scratch_database_is_kept_only_when_asked_and_the_next_drill_replaces_it"],
    },
    {
        "name": "a-scratch-database-left-behind-is-reported-dropped",
        "promise": "scratch_dropped says whether the drill's database is really gone",
        "edits": [("module_utils/forge/drill.py", "else self._drop_scratch()", "else (self._drop_scratch() or True)")],
        "tests": ["tests/test_restore.py::test_a_scratch_database_the_drill_cannot_drop_is_reported_as_left_behind"],
    },
    {
        "name": "missing-tables-go-unnamed",
        "promise": "a table the restore lacks is named",
        "edits": [(RESTORE, 'return ([f"table {t} missing after restore" for t in missing]',
                   'return ([f"table {t} missing after restore" for t in []]')],
        "tests": ["tests/test_drill.py::test_a_table_the_dump_left_out_is_named_as_missing"],
    },
    {
        "name": "restore-reads-the-whole-file-at-once",
        "promise": "a restore's memory does not grow with the dump",
        "edits": [(VERIFY, "handle.read(read_size or STREAM_READ_SIZE)", "handle.read()")],
        "tests": ["tests/test_restore_memory.py::test_an_encrypted_restore_spills_no_plaintext_and_its_memory_does_not_grow_with_the_dump"],
    },
    {
        "name": "gunzip-hands-on-whatever-a-read-expands-to",
        "promise": "a restore's memory does not grow with how far the dump compresses",
        "edits": [(COMPRESS, "self._inner.decompress(data, CHUNK_SIZE)", "self._inner.decompress(data)")],
        "tests": ["tests/test_restore_memory.py::"
                  "test_a_dump_that_expands_a_thousandfold_restores_in_the_memory_of_a_small_one"],
    },
    {
        "name": "zstd-fed-a-whole-read-at-once",
        "promise": "a zstd restore's memory does not grow with how far the dump compresses",
        "edits": [(COMPRESS, "_ZSTD_SLICE = 256\n", "_ZSTD_SLICE = 1 << 16\n")],
        "tests": ["tests/test_restore_memory.py::"
                  "test_a_dump_that_expands_a_thousandfold_restores_in_the_memory_of_a_small_one[zstd]"],
    },
    {
        "name": "an-unencrypted-file-streams-before-its-checksum-is-checked",
        "promise": "no SQL of a rewritten unencrypted file runs: its checksum is checked before psql reads it",
        "edits": [(RESTORE, "return backup.manifest is not None and not backup.encrypted\n",
                   "return False and not backup.encrypted\n")],
        "tests": ["tests/test_restore_safety.py::"
                  "test_a_doctored_unencrypted_file_runs_none_of_its_sql_before_its_checksum_is_checked"],
    },
    {
        "name": "the-stream-reads-the-file-not-the-proven-copy",
        "promise": "what is restored is the copy whose checksum was proven, whatever happens to the file since",
        "edits": [(VERIFY, 'copy = getattr(backup, "private_copy", None)\n    if copy is not None:\n        return',
                   'copy = None\n    if copy is not None:\n        return')],
        "tests": ["tests/test_restore_safety.py::"
                  "test_a_file_renamed_over_the_proven_one_before_the_stream_changes_nothing",
                  "tests/test_restore_safety.py::"
                  "test_a_proven_file_changed_in_place_while_it_restores_runs_none_of_the_change",
                  "tests/test_restore_safety.py::"
                  "test_a_custom_dump_cut_short_after_its_proof_still_restores_what_was_proven"],
    },
    {
        "name": "usb-copy-onto-the-root-file-system",
        "promise": "an unplugged USB disk is refused; nothing lands on the root file system",
        "edits": [("module_utils/forge/offsite.py", 'if mount == "/":', "if False:")],
        "tests": ["tests/test_offsite_usb.py::test_an_unplugged_usb_disk_is_refused_in_one_line_and_nothing_lands_on_the_root_file_system"],
    },
    {
        "name": "usb-copy-kept-unverified",
        "promise": "a copy that does not match its manifest never stays on the USB disk",
        "edits": [("module_utils/forge/offsite.py", "if self.verify({backup.name: digest}):", "if False:")],
        "tests": ["tests/test_offsite_usb.py::test_a_copy_that_does_not_match_its_manifest_never_stays_on_the_usb_disk"],
    },
    {
        "name": "usb-copy-beside-the-backups",
        "promise": "an unplugged USB disk whose mount point is on the backups' disk is refused",
        "edits": [("module_utils/forge/offsite.py", "os.stat(mount).st_dev == os.stat(self.backup_dir).st_dev:",
                   "False:")],
        "tests": ["tests/test_offsite_usb.py::test_an_unplugged_usb_disk_whose_mount_point_is_on_the_backups_disk_is_refused"],
    },
    {
        "name": "pg-dump-detail-lines-reach-sentry",
        "promise": "row values in pg_dump's DETAIL/HINT lines stay on the host",
        "edits": [(BACKUP, "said = [line for line in stderr_lines if not line.lower().startswith(_QUOTING_LINES)]",
                   "said = list(stderr_lines)")],
        "tests": ["tests/test_backup_script.py::test_row_values_in_pg_dumps_detail_lines_reach_neither_the_message_nor_sentry"],
    },
    {
        "name": "critical-alerts-reach-only-the-pager",
        "promise": "a critical alert pages someone and still reaches the team",
        "edits": [("roles/alertmanager/templates/alertmanager.yml.j2", "      continue: true\n    - receiver: team\n",
                   "      continue: true\n")],
        "tests": ["tests/test_checklist_monitoring.py::test_alertmanager_routes_critical_alerts_to_the_pager_and_every_alert_to_the_team"],
    },
    {
        "name": "checklist-7-ignores-a-failing-probe",
        "promise": "checklist item 7 fails when any app host's /health fails its probe",
        "edits": [("module_utils/forge/checklist.py", 'if target["health"] != "up" or probe != "1":',
                   'if target["health"] != "up":')],
        "tests": ["tests/test_checklist_monitoring.py::test_item_7_fails_when_any_app_hosts_health_answers_503_or_says_unhealthy"],
    },
    {
        "name": "checklist-9-never-asks-alertmanager",
        "promise": "checklist item 9 fails when Alertmanager is down",
        "edits": [("module_utils/forge/checklist.py",
                   'status_doc = self._get(self.s["alertmanager_url"], "/api/v2/status")',
                   'status_doc = {"cluster": {"status": "disabled"}}')],
        "tests": ["tests/test_checklist_monitoring.py::test_item_9_fails_when_alertmanager_is_stopped"],
    },
    {
        "name": "any-comment-less-side-name-is-dropped",
        "promise": "a restore drops only its own target's crashed side databases",
        "edits": [(RESTORE, "            if comment is None and name != derived_name(target, name[-len(_SIDE_SUFFIX_EXAMPLE):]):\n"
                            "                continue\n", "")],
        "tests": ["tests/test_restore_safety.py::test_a_side_database_left_between_create_and_comment_is_cleared_by_the_next_restore"],
    },
    {
        "name": "a-failed-backup-removes-the-last-good-one",
        "promise": "a failed backup deletes nothing: the last good backup stays byte for byte",
        "edits": [(BACKUP, '            _unlink_quietly(locals().get("partial_path"))\n',
                   '            _unlink_quietly(locals().get("partial_path"))\n'
                   '            for backup in self._scan()[:1]:\n'
                   '                _unlink_quietly(backup.path)\n')],
        "tests": ["tests/test_backup_script.py::test_pg_dump_killed_mid_dump_leaves_no_backup",
                  "tests/test_backup_script.py::test_truncated_dump_without_completion_marker_fails"],
    },
    {
        "name": "the-passphrase-lands-in-the-manifest",
        "promise": "the manifest, checksum file and log never hold the passphrase",
        "edits": [(BACKUP, '            "tool": "infer-forge-ops",\n',
                   '            "tool": "infer-forge-ops",\n'
                   '            "note": (self.passphrase or b"").decode("utf-8", "replace"),\n')],
        "tests": ["tests/test_backup_script.py::test_the_manifest_is_signed_and_never_holds_the_passphrase"],
    },
    {
        "name": "autovacuum-counts-as-a-users-session",
        "promise": "a forced restore does not stop on autovacuum, which only a superuser may end",
        "edits": [(RESTORE, "AND usesysid IS NOT NULL ", "")],
        "tests": ["tests/test_restore_safety.py::"
                  "test_an_autovacuum_worker_on_the_target_is_no_session_and_does_not_stop_a_forced_restore"],
    },
    {
        "name": "the-passphrase-value-is-ignored",
        "promise": "a passphrase given as a value encrypts, signs and restores as the same one in its file",
        "edits": [(SIGNING, "    if value:\n        return passphrase_bytes(value)\n", "")],
        "tests": ["tests/test_passphrase_value.py::"
                  "test_a_restore_and_a_drill_given_the_value_trust_and_restore_what_the_file_signed",
                  "tests/test_passphrase_value.py::"
                  "test_a_backup_encrypted_with_the_value_reads_with_the_runbooks_openssl_and_is_signed_as_by_the_file"],
    },
    {
        "name": "the-drill-locks-too-weakly",
        "promise": "the PITR drill's counts are exact while the app writes: writers wait while the point is written",
        "edits": [(PITR, '"LOCK TABLE {} IN SHARE MODE"', '"LOCK TABLE {} IN ACCESS SHARE MODE"')],
        "tests": ["tests/test_pitr_engine.py::"
                  "test_a_lock_not_granted_in_time_fails_in_one_line_and_leaves_the_writer_alone"],
    },
    {
        "name": "the-drill-counts-after-the-point-without-its-snapshot",
        "promise": "the PITR drill counts in the snapshot taken before the restore point, not what came after it",
        "edits": [(PITR, "            counts = count_rows(count, tables)\n",
                   "            counter.rollback()\n            counts = count_rows(counter.cursor(), tables)\n")],
        "tests": ["tests/test_pitr_engine.py::test_a_commit_between_the_point_and_the_counts_is_not_counted"],
    },
    {
        "name": "a-staged-wal-segment-shows-under-its-name-while-it-is-written",
        "promise": "a PITR recovery replays whole WAL segments only: a staged one appears under its name when complete",
        "edits": [(WALSTAGE, 'partial = os.path.join(self.directory, f".{name}.partial")',
                   "partial = os.path.join(self.directory, name)")],
        "tests": ["tests/test_pitr_engine.py::test_a_staged_name_only_ever_holds_a_whole_segment"],
    },
    {
        "name": "a-time-before-the-newest-base-backup-is-out-of-reach",
        "promise": "a recovery to any time in the window, also before the newest base backup",
        "edits": [(SCRATCH, 'backup = "auto" if target == "time" else "latest"', 'backup = "latest"')],
        "tests": ["tests/test_pitr_engine.py::"
                  "test_a_time_recovery_lets_barman_choose_the_backup_and_the_others_start_from_the_newest"],
    },
    {
        "name": "a-wal-segment-that-fails-to-copy-ends-the-recovery-early",
        "promise": "a recovery to latest replays all of Barman's archive or stops in one line, never ends short",
        "edits": [(SCRATCH, 'cp "$s" "%p" || exit 128', 'cp "$s" "%p"')],
        "tests": ["tests/test_pitr_engine.py::"
                  "test_a_segment_the_archive_holds_but_cannot_be_copied_stops_the_recovery_instead_of_ending_it"],
    },
    {
        "name": "a-removed-scratch-cluster-leaves-its-stager-running",
        "promise": "a recovery that fails or is removed leaves nothing running and nothing behind",
        "edits": [(SCRATCH, "        self.stop_staging()  # after the server", "        pass  # after the server")],
        "tests": ["tests/test_pitr_engine.py::"
                  "test_a_failed_barman_restore_stops_the_stager_and_leaves_nothing_behind"],
    },
    {
        "name": "only-a-recovery-to-latest-gets-the-wal-still-being-received",
        "promise": "every PITR target reaches the last byte Barman received, with no WAL switch",
        "edits": [(SCRATCH, "        self._add_received_wal(barman)\n",
                   "        if target == \"latest\":\n            self._add_received_wal(barman)\n")],
        "tests": ["tests/test_pitr_recovery.py::test_a_time_two_seconds_before_a_delete_is_recovered_from_the_segment_still_being_received"],
    },
    {
        "name": "a-segment-received-whole-but-not-filed-is-left-out",
        "promise": "a recovery replays the segments barman cron has not filed yet, not only the .partial",
        "edits": [(BARMAN, 'RECEIVED_WAL_RE = re.compile(r"^([0-9A-F]{24})(\\.partial)?\\Z")',
                   'RECEIVED_WAL_RE = re.compile(r"^([0-9A-F]{24})(\\.partial)\\Z")')],
        "tests": ["tests/test_pitr_recovery.py::test_a_segment_received_whole_but_not_filed_yet_is_replayed_for_every_target"],
    },
    {
        "name": "a-time-at-the-last-commit-received-is-let-through",
        "promise": "a time the received WAL does not reach is refused in one line before anything is copied",
        "edits": [(PITR, "if last is not None and when >= last:", "if last is not None and when > last:")],
        "tests": ["tests/test_pitr_recovery.py::test_a_time_at_or_after_the_last_commit_received_is_refused_in_one_line_before_anything_is_copied"],
    },
    {
        "name": "a-failed-recovery-removes-what-would-show-why",
        "promise": "a recovery that fails once PostgreSQL ran keeps its directory and log unless asked to remove it",
        "edits": [(PITR, "            if remove_failed:\n                scratch.remove()",
                   "            if True:\n                scratch.remove()")],
        "tests": ["tests/test_pitr_recovery.py::test_a_replay_that_ends_in_a_fatal_is_one_line_quoting_it_and_keeps_the_directory_and_its_log"],
    },
    {
        "name": "a-served-copy-goes-back-with-barmans-configuration",
        "promise": "a copy put back into production carries the production server's configuration, not Barman's",
        "edits": [(PITR_SERVE, "                os.replace(origin, os.path.join(self.cluster.data, name))\n",
                   "                pass\n")],
        "tests": ["tests/test_pitr_recovery.py::"
                  "test_a_served_copy_gives_one_login_a_base_backup_that_carries_the_sources_own_configuration"],
    },
    {
        "name": "a-served-copy-answers-without-tls",
        "promise": "the put-back's base backup crosses the network only over TLS to the pinned certificate",
        "edits": [(PITR_SERVE, 'f"hostssl replication {login} {network} scram-sha-256', 'f"host replication {login} {network} scram-sha-256')],
        "tests": ["tests/test_pitr_recovery.py::"
                  "test_a_served_copy_gives_one_login_a_base_backup_that_carries_the_sources_own_configuration"],
    },
    {
        "name": "a-snapshot-taken-back-replaces-what-barman-streamed",
        "promise": "a rebuilt Barman host takes its off-site history back without replacing a file Barman holds",
        "edits": [(PITR_OFFSITE, "        os.link(source, target, follow_symlinks=False)\n    except FileExistsError:\n        return False",
                   "        os.replace(source, target)\n    except FileExistsError:\n        return False\n    return True")],
        "tests": ["tests/test_pitr_offsite_engine.py::"
                  "test_a_snapshot_taken_back_into_barman_adds_what_is_missing_and_replaces_nothing"],
    },
    {
        "name": "a-snapshot-of-another-database-is-mixed-in",
        "promise": "a snapshot of another PostgreSQL system is refused and nothing moves into Barman's catalog",
        "edits": [(PITR_OFFSITE, "    if ours and theirs and ours != theirs:", "    if False:")],
        "tests": ["tests/test_pitr_offsite_engine.py::test_a_snapshot_of_another_database_is_refused_and_nothing_moves"],
    },
    {
        "name": "the-nas-hands-back-a-copy-damaged-since-its-verification",
        "promise": "the way back from the NAS takes only a copy read again now against its manifest",
        "edits": [(FARSIDE, "        entry = far._check(name, path, info, None)",
                   "        entry = {\"sha256\": copies[name].get(\"sha256\"), \"size\": info.st_size, "
                   "\"verified\": True}")],
        "tests": ["tests/test_offsite_gate.py::"
                  "test_the_way_back_takes_the_newest_verified_copy_and_passes_over_one_damaged_since"],
    },
    {
        "name": "a-history-file-is-taken-for-a-segment-directory",
        "promise": "a time recovery works after a put-back filed a timeline history beside the segment directories",
        "edits": [(BARMAN, "if WAL_BUCKET_RE.match(b)\n                              and os.path.isdir(os.path.join(archive, b))",
                   "if len(b) == 16")],
        "tests": ["tests/test_pitr_recovery.py::test_a_history_file_in_the_archive_does_not_stop_a_time_recovery"],
    },
    {
        "name": "a-scratch-cluster-runs-what-the-source-configured",
        "promise": "a scratch cluster never runs a command, library or file write the source's ALTER SYSTEM planted",
        "edits": [(SCRATCH, "        chosen = dict(neutralised_settings(self.data), ", "        chosen = dict(")],
        "tests": ["tests/test_pitr_recovery.py::test_a_scratch_cluster_runs_nothing_the_source_configured_and_still_recovers"],
    },
    {
        "name": "roots-client-wrapper-passes-psql-a-shell-escape",
        "promise": "psql in the database container, run for the backup user, runs SQL and never a shell",
        "edits": [(DBCLIENT, "        for data in restricted(chunks()):", "        for data in chunks():")],
        "tests": ["tests/test_postgres17_container.py::"
                  "test_a_stream_through_roots_psql_runs_sql_never_a_shell_in_the_container"],
    },
    {
        "name": "roots-client-wrapper-connects-as-the-callers-role",
        "promise": "the backup user never reaches the database container as a role of its own choosing",
        "edits": [(DBCLIENT, '    passed["PGUSER"] = role', '    passed["PGUSER"] = environ.get("PGUSER") or role')],
        "tests": ["tests/test_postgres17_container.py::"
                  "test_sql_through_roots_wrapper_runs_no_program_and_the_callers_pguser_counts_for_nothing"],
    },
    {
        "name": "root-reads-a-config-the-backup-user-wrote",
        "promise": "root never takes a setting (a dump command) from a file another account can write",
        "edits": [(SETTINGS, "            if owner.st_uid != 0:", "            if owner.st_uid < 0:")],
        "tests": ["tests/test_privileges.py::test_root_never_takes_a_setting_from_a_file_another_account_can_write"],
    },
    {
        "name": "a-recovery-target-leaves-its-quotes",
        "promise": "a recovery target never adds a setting (a command) to the scratch cluster's configuration",
        "edits": [(PITR, "            check_target(target, value)\n", "            pass\n")],
        "tests": ["tests/test_pitr_engine.py::test_a_recovery_target_that_could_reach_the_scratch_configuration_is_refused"],
    },
    {
        "name": "a-short-passphrase-writes-a-backup",
        "promise": "no new backup is written with a passphrase under 20 characters",
        "edits": [(BACKUP, "            signing.require_strength(self.passphrase)\n", "")],
        "tests": ["tests/test_passphrase_value.py::"
                  "test_a_new_backup_with_a_passphrase_under_20_characters_is_refused_and_writes_nothing"],
    },
    {
        "name": "igzip-inherits-the-engines-secrets",
        "promise": "a tool the engine starts never sees POSTGRES_PASSWORD, SENTRY_DSN or another setting",
        "edits": [("module_utils/forge/compress.py", "                                      env=tool_env())",
                   "                                      env=None)")],
        "tests": ["tests/test_igzip.py::test_igzip_gets_no_secret_of_the_engines_environment"],
    },
    {
        "name": "the-nas-prune-believes-the-time-a-snapshot-claims",
        "promise": "the NAS's prune dates snapshots by their arrival, never by the time a Barman host wrote into them",
        "edits": [(PITR_OFFSITE, "    expired = choose_expired(_arrivals(path, snapshots), ",
                   "    expired = choose_expired(snapshots, ")],
        "tests": ["tests/test_pitr_offsite_engine.py::"
                  "test_a_prune_forgets_by_arrival_and_prunes_with_the_password_in_its_environment_only"],
    },
    {
        "name": "checklist-item-12-opens-a-planted-fifo",
        "waits": True,  # its test waits out a deadline: scheduled beside the others
        "promise": "the checklist, as root, never hangs on or follows what barman planted for its PITR status",
        "edits": [("module_utils/forge/checklist.py", "    for line in (read_small_file(path) or \"\").splitlines():\n"
                   "        if line.startswith(name + \"{\"):\n            match = re.search(label",
                   "    for line in open(path).read().splitlines():\n"
                   "        if line.startswith(name + \"{\"):\n            match = re.search(label")],
        "tests": ["tests/test_checklist.py::test_item_12_never_hangs_on_or_follows_what_barman_planted_for_its_status"],
    },
    {
        "name": "roots-client-wrapper-runs-a-superuser-role",
        "promise": "the wrapper never runs a client as a role that may run programs (a shell through SQL alone)",
        "edits": [(DBCLIENT, "            check_role_is_powerless(container, config[\"exec_user\"], passed[\"PGUSER\"])",
                   "            pass")],
        "tests": ["tests/test_postgres17_container.py::"
                  "test_roots_wrapper_refuses_a_superuser_role_even_in_roots_own_settings"],
    },
    {
        "name": "the-partial-sweep-matches-by-name-prefix",
        "promise": "a backup removes only its own database's leftovers, never another database's running backup",
        "edits": [(CATALOG, '    return backup is not None and backup.group("stem") == stem\n',
                   '    return name.startswith("." + stem + "_") and (".partial-" in name or name.endswith(".tmp"))\n')],
        "tests": ["tests/test_backup_script.py::"
                  "test_the_sweep_of_stale_partials_never_touches_another_databases_running_backup"],
    },
    {
        "name": "the-lock-is-opened-whatever-it-is",
        "promise": "a FIFO or directory planted at the lock path is refused in one line, never used as a lock",
        "edits": [(FSUTIL, "    if not stat.S_ISREG(os.fstat(fd).st_mode):\n        os.close(fd)\n        raise",
                   "    if False:\n        os.close(fd)\n        raise")],
        "tests": ["tests/test_backup_script.py::test_a_lock_path_that_is_not_a_plain_file_is_refused_in_one_line"],
    },
    {
        "name": "backup-db-sh-ignores-an-unknown-argument",
        "promise": "backup_db.sh --dry-run (any unknown argument) does nothing, never a real backup and retention",
        "edits": [("module_utils/forge/cli.py", "    unknown = [arg for arg in argv[1:] if arg not in known]",
                   "    unknown = []")],
        "tests": ["tests/test_backup_script.py::test_an_unknown_argument_is_refused_with_usage_and_nothing_is_done",
                  "tests/test_backup_script.py::test_offsite_copy_refuses_an_unknown_argument_before_it_copies_anything"],
    },
    {
        "name": "a-bug-in-a-backup-leaves-no-failure-metric",
        "promise": "any unexpected exception in a backup writes last_run_success 0 and is one line, never a traceback",
        "edits": [(BACKUP, "        except Exception as exc:  # noqa: BLE001 - a bug is recorded like any failure, in one line",
                   "        except ZeroDivisionError as exc:")],
        "tests": ["tests/test_backup_script.py::test_an_exception_nobody_raised_on_purpose_is_recorded_as_a_failure"],
    },
    {
        "name": "a-full-log-disk-stops-the-backup",
        "promise": "cron's log on a full file system never stops a backup",
        "edits": [("module_utils/forge/cli.py", "            return self._stream.write(text)\n        except OSError:",
                   "            return self._stream.write(text)\n        except BrokenPipeError:")],
        "tests": ["tests/test_backup_script.py::test_a_full_log_disk_never_stops_a_backup_and_it_is_recorded"],
    },
    {
        "name": "a-backup-runs-out-of-locks-late",
        "promise": "more tables than the lock table holds is refused before the dump, naming the setting to raise",
        "edits": [(BACKUP, "            self._check_lock_headroom(cursor, len(tables))\n", "")],
        "tests": ["tests/test_lock_headroom.py::test_more_tables_than_the_lock_table_holds_is_refused_before_the_dump"],
    },
    {
        "name": "postgresqls-hint-is-dropped",
        "promise": "PostgreSQL's HINT (the setting to change) reaches the one-line message",
        "edits": [(BACKUP, "            if hint:\n                self.error +=", "            if False:\n                self.error +="),
                  (BACKUP, "    if hints and last:\n", "    if False:\n")],
        "tests": ["tests/test_lock_headroom.py::"
                  "test_postgresqls_hint_reaches_the_message_when_the_lock_table_runs_out_anyway"],
    },
    {
        "name": "a-stalled-dump-hangs-the-run",
        "waits": True,  # its test waits out a deadline: scheduled beside the others
        "promise": "a pg_dump that gives no output for BACKUP_STALL_TIMEOUT is stopped and named in one line",
        "edits": [(BACKUP, "            watch.start()\n", "")],
        "tests": ["tests/test_stalls.py::test_a_dump_that_gives_no_output_is_stopped_and_named_in_one_line"],
    },
    {
        "name": "a-stopped-compressor-is-left-running",
        "waits": True,  # its test waits out a deadline: scheduled beside the others
        "promise": "a compressor that stops is ended and named, never waited on for ever",
        "edits": [(COMPRESS, "    def kill(self):\n        \"\"\"From the stall watch's thread: a stopped igzip is ended, and the "
                   "write to it fails.\"\"\"\n        if self._proc.poll() is None:\n            self._proc.kill()",
                   "    def kill(self):\n        \"\"\"From the stall watch's thread: a stopped igzip is ended, and the "
                   "write to it fails.\"\"\"\n        if self._proc.poll() is None:\n            pass")],
        "tests": ["tests/test_stalls.py::test_a_compressor_that_stops_is_stopped_and_named_in_one_line"],
    },
    {
        "name": "a-lock-wait-does-not-say-who-holds-the-lock",
        "promise": "a backup that gave up waiting for a table lock names the table and the session holding it",
        "edits": [(BACKUP, "    return \", \".join(f\"pid {pid} (user {user}, {mode})\" for pid, user, mode in rows) or "
                   "\"another session\"", "    return \"another session\"")],
        "tests": ["tests/test_stalls.py::"
                  "test_a_table_lock_held_by_another_session_ends_the_wait_naming_table_and_session"],
    },
    {
        "name": "forge-restore-reports-ok-for-an-unverified-restore",
        "promise": "forge_restore restores a file nothing proves only when asked; otherwise the target is untouched",
        "edits": [(RESTORE, "        if report.get(\"verdict\") == UNVERIFIED and not self.options.allow_unverified:",
                   "        if False:")],
        "tests": ["tests/test_restore.py::test_an_unverified_restore_is_refused_unless_asked_and_touches_nothing"],
    },
    {
        "name": "a-big-schemas-manifest-is-refused-by-our-own-verify",
        "promise": "a backup that reports success is one our own verify and drill accept, whatever the schema",
        "edits": [(CATALOG, "MAX_MANIFEST_BYTES = 64 << 20\n", "MAX_MANIFEST_BYTES = 1 << 20\n")],
        "tests": ["tests/test_big_schemas.py::"
                  "test_a_backup_whose_manifest_is_past_a_mebibyte_verifies_and_drills_exactly"],
    },
    {
        "name": "a-retired-key-id-is-taken-as-its-signature",
        "promise": "a retired key proves only the manifests it signed, not every manifest that names its key id",
        "edits": [(CATALOG, "                outcome = signing.check(raw, retired[0])\n",
                   "                outcome = signing.SIGNATURE_OK\n")],
        "tests": ["tests/test_key_rotation.py::test_a_manifest_that_names_a_retired_key_but_was_changed_is_refused"],
    },
    {
        "name": "an-old-key-backup-is-decrypted-with-the-new-key",
        "promise": "after a rotation, a backup under the retired key restores and drills PASS",
        "edits": [(RESTORE, "            return backup.key_passphrase  # a retired key proved its manifest: that key made the "
                   "file\n", "            pass\n")],
        "tests": ["tests/test_key_rotation.py::"
                  "test_an_old_key_backup_drills_pass_after_the_rotation_with_the_old_key_retired[restore_db.sh]"],
    },
    {
        "name": "retention-ignores-the-retired-keys",
        "promise": "old-key backups leave by retention once a retired key proves them",
        "edits": [(BACKUP, "        return catalog.TrustPolicy(self.passphrase, require_encryption=self.options.encrypt, "
                   "now=self.clock(),\n                                   retired=self.retired)",
                   "        return catalog.TrustPolicy(self.passphrase, require_encryption=self.options.encrypt, "
                   "now=self.clock())")],
        "tests": ["tests/test_key_rotation.py::"
                  "test_retention_removes_old_key_backups_it_can_prove_and_counts_them_until_then"],
    },
    {
        "name": "old-key-backups-stay-home",
        "promise": "after a rotation, backups under the retired key keep going off site",
        "edits": [(OFFSITE, "        policy = TrustPolicy(passphrase, now=self.clock(), retired=retired)",
                   "        policy = TrustPolicy(passphrase, now=self.clock())")],
        "tests": ["tests/test_key_rotation.py::test_old_key_backups_go_off_site_with_the_new_ones"],
    },
    {
        "name": "a-backup-nobody-can-prove-is-kept-in-silence",
        "promise": "a backup no configured key proves is never deleted, and each run says so",
        "edits": [(BACKUP, "            if backup.unknown_key_id:\n", "            if False:\n")],
        "tests": ["tests/test_key_rotation.py::test_a_backup_no_configured_key_proves_is_kept_and_said_so"],
    },
    {
        "name": "a-readable-retired-keyring-is-used",
        "promise": "the retired passphrases are read only from a file its owner alone can read",
        "edits": [(SIGNING, 'data = _read_guarded(path, f"retired passphrases file {path}", 0o077,',
                   'data = _read_guarded(path, f"retired passphrases file {path}", 0o002,')],
        "tests": ["tests/test_key_rotation.py::"
                  "test_a_retired_keyring_that_is_not_private_is_refused_in_one_line[group-readable]"],
    },
    {
        "name": "a-stalled-psql-hangs-the-restore",
        "waits": True,  # its test waits out a deadline: scheduled beside the others
        "promise": "a psql that takes no input and does nothing on the server is stopped and named in one line",
        "edits": [(RESTORE, "            watch = self._watch(tool, target, proc.kill)\n            watch.start()\n",
                   "            watch = self._watch(tool, target, proc.kill)\n")],
        "tests": ["tests/test_restore_stalls.py::"
                  "test_a_client_that_stops_ends_the_drill_in_one_line_and_leaves_no_scratch_database[psql-plain]"],
    },
    {
        "name": "a-stalled-pg-restore-hangs-the-drill",
        "waits": True,  # its test waits out a deadline: scheduled beside the others
        "promise": "a pg_restore --jobs that stops is stopped and named in one line",
        "edits": [(RESTORE, "                watch = self._watch(\"pg_restore\", target, proc.kill)\n                watch.start()\n",
                   "                watch = self._watch(\"pg_restore\", target, proc.kill)\n")],
        "tests": ["tests/test_restore_stalls.py::"
                  "test_a_client_that_stops_ends_the_drill_in_one_line_and_leaves_no_scratch_database"
                  "[pg_restore-custom]"],
    },
    {
        "name": "a-restores-lock-wait-is-unbounded",
        "waits": True,  # its test waits out a deadline: scheduled beside the others
        "promise": "a restore that waits for a lock for BACKUP_STALL_TIMEOUT ends, naming who holds it",
        "edits": [(CLIENTWATCH, "                lock_since = (lock_since or now) if holders else None\n",
                   "                lock_since = None\n")],
        "tests": ["tests/test_restore_stalls.py::test_a_lock_held_by_another_session_ends_the_restore_naming_the_session"],
    },
    {
        "name": "an-index-build-is-taken-for-a-stall",
        "promise": "a long step the server works on during a restore is progress, never stopped",
        "edits": [(CLIENTWATCH, "                    self._moved_at = now  # working, or waiting on another session of this restore\n",
                   "                    pass\n")],
        "tests": ["tests/test_restore_stalls.py::test_a_long_step_the_server_is_working_on_is_progress_not_a_stall"],
    },
    {
        "name": "a-proven-restore-is-owned-by-the-login-outside-the-wrapper",
        "promise": "with RESTORE_OWNER set, what a restore makes belongs to the owner, not the superuser login",
        "edits": [(RESTORE, "        if self.options.owner and not runs_through_wrapper(command):\n",
                   "        if False:\n")],
        "tests": ["tests/test_restore_roles.py::"
                  "test_a_proven_backup_restores_as_the_owner_and_the_owner_owns_what_it_made[plain]"],
    },
    {
        "name": "a-superuser-login-restores-a-file-nothing-proves",
        "promise": "a file nothing proves never runs as a superuser",
        "edits": [(RESTORE, "                if report.get(\"verdict\") == UNVERIFIED:\n"
                   "                    self._refuse_unverified_as_superuser(control, backup, target)\n", "")],
        "tests": ["tests/test_restore_roles.py::"
                  "test_a_superuser_login_never_runs_a_file_nothing_proves[set-role-none-owner]"],
    },
    {
        "name": "a-retired-key-backup-is-chosen-as-latest",
        "promise": "after a rotation, latest is the newest backup under the current key, never one a retired key signed",
        "edits": [(VERIFY, "    chosen = max(current or good, key=lambda b: (b.finished_at, b.name))\n",
                   "    chosen = max(good, key=lambda b: (b.finished_at, b.name))\n")],
        "tests": ["tests/test_key_rotation.py::"
                  "test_a_backup_under_a_retired_key_is_never_chosen_over_one_under_the_current_key"],
    },
    {
        "name": "a-runbook-file-under-the-old-key-is-tried-with-the-new-one-only",
        "promise": "after a rotation, a file no manifest names the key of opens with the retired passphrase that fits",
        "edits": [(RESTORE, "        if backup.manifest is None and not backup.legacy and self.retired_passphrases():\n",
                   "        if False:\n")],
        "tests": ["tests/test_key_rotation.py::"
                  "test_a_file_without_a_manifest_made_under_the_old_key_restores_with_the_retired_passphrase"],
    },
    {
        "name": "a-write-the-watch-cannot-free-holds-the-restore",
        "waits": True,  # its test waits out a deadline: scheduled beside the others
        "promise": "a client killed at the deadline whose child still holds the pipe never holds the restore",
        "edits": [(RESTORE, "                while feeder.is_alive() and not (watch.stalled and feeder.wait_seconds() > 2):\n",
                   "                while feeder.is_alive():\n")],
        "tests": ["tests/test_restore_stalls.py::test_a_client_whose_child_keeps_the_pipe_open_still_ends_the_restore"],
    },
    {
        "name": "the-nas-counts-a-copy-it-cannot-check",
        "promise": "the NAS counts only copies whose off-site signature it can check; others are unverified",
        "edits": [(FARSIDE, "        if verdict != SIGNATURE_OK:\n            return False, NO_SIGNATURE\n",
                   "        if verdict != SIGNATURE_OK:\n            return True, NO_SIGNATURE\n")],
        "tests": ["tests/test_offsite_gate.py::"
                  "test_a_made_up_upload_under_a_new_name_is_kept_but_never_counted_as_verified"],
    },
    {
        "name": "a-real-copy-replayed-under-a-newer-name-becomes-the-newest",
        "promise": "the off-site signature binds a copy to its file name: a replay under another name is quarantined",
        "edits": [(FARSIDE, "        if manifest.get(\"file\") != name:\n", "        if False:\n")],
        "tests": ["tests/test_offsite_gate.py::test_a_real_copy_sent_again_under_a_newer_name_is_quarantined"],
    },
    {
        "name": "an-unverified-copy-keeps-a-day-for-min-keep",
        "promise": "NAS retention's min_keep counts only verified copies: made-up uploads never keep a day",
        "edits": [(FARSIDE, "for n in names if copies[n].get(\"verified\")}", "for n in names}")],
        "tests": ["tests/test_offsite_gate.py::test_unverified_uploads_never_keep_a_day_that_retention_would_end"],
    },
    {
        "name": "the-host-counts-the-nas-unverified-copies",
        "promise": "the host counts only the copies the NAS verified and names the others",
        "edits": [(OFFSITE, "        ours = [n for n in ours if n not in unverified]\n", "")],
        "tests": ["tests/test_offsite_gate.py::"
                  "test_a_made_up_upload_under_a_new_name_is_kept_but_never_counted_as_verified"],
    },
    {
        "name": "a-count-one-row-off-passes",
        "promise": "restored counts equal the snapshot's exactly: one row more or fewer fails, on every format",
        "edits": [(RESTORE, "if expected[t] != actual[t]]", "if abs(expected[t] - actual[t]) > 1]")],
        "tests": [BOUNDARIES + "test_a_manifest_one_row_off_fails_the_drill_naming_the_table[plain-zstd-one-row-more]",
                  BOUNDARIES + "test_a_forced_restore_one_row_off_leaves_the_target_as_it_was[custom-one-row-fewer]"],
    },
    {
        "name": "only-plain-gzip-is-proven-before-it-streams",
        "promise": "an unencrypted backup of any format is proven in full before a byte reaches the database",
        "edits": [(RESTORE, "        return backup.manifest is not None and not backup.encrypted\n",
                   "        return (backup.manifest is not None and not backup.encrypted and backup.dump_format == "
                   "\"plain\"\n                and backup.compression == \"gzip\")\n")],
        "tests": [BOUNDARIES + "test_an_unencrypted_file_cut_short_once_proven_still_restores_what_was_proven[plain-zstd]",
                  BOUNDARIES + "test_an_unencrypted_file_cut_short_once_proven_still_restores_what_was_proven[custom]"],
    },
    {
        "name": "a-custom-restore-skips-the-counts",
        "promise": "a restore compares counts with the manifest before the swap, custom format included",
        "edits": [(RESTORE, "        if not self.options.check_counts or expected is None:\n",
                   "        if not self.options.check_counts or expected is None or backup.dump_format == \"custom\":\n")],
        "tests": [BOUNDARIES + "test_a_forced_restore_one_row_off_leaves_the_target_as_it_was[custom-one-row-more]",
                  BOUNDARIES + "test_a_forced_restore_one_row_off_leaves_the_target_as_it_was[custom-encrypted-one-row-fewer]"],
    },
    {
        "name": "checklist-item-4-takes-a-finished-drill-for-a-passed-one",
        "promise": "checklist item 4 passes only on a drill that passed, never on one that merely finished",
        "edits": [("module_utils/forge/checklist.py", '            if report.get("passed") and report.get("finished_at"):\n',
                   '            if report.get("finished_at"):\n')],
        "tests": ["tests/test_checklist.py::"
                  "test_item_4_fails_on_a_failed_drill_even_with_a_finish_time_and_an_earlier_pass"],
    },
    {
        "name": "checklist-item-12-skips-the-off-site-check-that-never-ran",
        "promise": "checklist item 12 fails when the off-site PITR copy ran but its restic check never did",
        "edits": [("module_utils/forge/checklist.py", "            if success is None:\n                status = FAIL\n"
                   "                evidence.append(f\"{server}: no successful off-site PITR {what} on record\"",
                   "            if success is None:\n                continue\n"
                   "                evidence.append(f\"{server}: no successful off-site PITR {what} on record\"")],
        "tests": ["tests/test_checklist.py::test_item_12_fails_on_what_point_in_time_recovery_lacks"],
    },
    {
        "name": "health-waits-for-a-check-past-the-deadline",
        "waits": True,  # its test waits out a deadline: scheduled beside the others
        "promise": "a health run ends at its timeout even when no read of a trickling app ever times out",
        "edits": [("module_utils/forge/health.py", "        thread.join(max(0.0, deadline - time.perf_counter()))\n",
                   "        thread.join()\n")],
        "tests": ["tests/test_health.py::test_an_app_that_trickles_its_answer_times_out_within_the_bound"],
    },
    {
        "name": "a-failed-move-of-a-staged-segment-says-restored",
        "promise": "restore_command never reports a WAL segment restored when moving the staged copy failed",
        "edits": [(SCRATCH, 'if [ -f "{stage}/$f" ] && mv -f "{stage}/$f" "%p"; then exit 0; fi; \'',
                   'if [ -f "{stage}/$f" ]; then mv -f "{stage}/$f" "%p"; exit 0; fi; \'')],
        "tests": ["tests/test_pitr_engine.py::"
                  "test_a_staged_segment_that_cannot_be_moved_into_place_is_never_reported_as_restored"],
    },
    {
        "name": "every-restore-client-gets-the-password-in-its-environment",
        "promise": "psql and pg_restore get the password as an in-memory file, never PGPASSWORD (docker exec aside)",
        "edits": [(RESTORE, "        if command is not None and runs_in_container(command) and self.settings.password:\n",
                   "        if self.settings.password:\n")],
        "tests": ["tests/test_child_secrets.py::test_a_restore_hands_its_clients_no_secret_on_their_command_line_or_"
                  "in_their_environment[plain-zstd-encrypted]"],
    },
    {
        "name": "pg-restore-reading-the-file-gets-the-password-in-its-environment",
        "promise": "pg_restore --jobs, which reads the proven file itself, gets no password in its environment",
        "edits": [(RESTORE, "proc = subprocess.Popen(command, env=self._env(target, passfile), stdout=subprocess.DEVNULL,",
                   "proc = subprocess.Popen(command, env=dict(self._env(target, passfile), "
                   "PGPASSWORD=self.settings.password), stdout=subprocess.DEVNULL,")],
        "tests": ["tests/test_child_secrets.py::test_a_restore_hands_its_clients_no_secret_on_their_command_line_or_"
                  "in_their_environment[custom-jobs-2-reads-the-file]"],
    },
    {
        "name": "the-swap-renames-in-two-transactions",
        "promise": "a swap renames the target away and the copy in as one transaction: never a missing target",
        "edits": [(RESTORE, "            try:\n                with control.transaction():\n"
                            "                    control.execute(sql.SQL(\"ALTER DATABASE {} RENAME TO {}\").format(\n"
                            "                        sql.Identifier(target), sql.Identifier(previous)))\n",
                   "            try:\n                if True:\n"
                   "                    control.execute(sql.SQL(\"ALTER DATABASE {} RENAME TO {}\").format(\n"
                   "                        sql.Identifier(target), sql.Identifier(previous)))\n")],
        "tests": ["tests/test_restore_safety.py::"
                  "test_a_swap_that_cannot_finish_leaves_the_target_under_its_name_with_its_data"],
    },
    {
        "name": "the-backup-gets-its-name-before-its-manifest",
        "promise": "a backup is never visible under its name before its manifest and checksum are",
        "edits": [("module_utils/forge/backup.py",
                   "            write_atomic(final_path + catalog.MANIFEST_SUFFIX, text)\n"
                   "            write_atomic(final_path + catalog.CHECKSUM_SUFFIX, f\"{stream['sha256']}  {name}\\n\")\n"
                   "            os.rename(partial_path, final_path)\n",
                   "            os.rename(partial_path, final_path)\n"
                   "            write_atomic(final_path + catalog.MANIFEST_SUFFIX, text)\n"
                   "            write_atomic(final_path + catalog.CHECKSUM_SUFFIX, f\"{stream['sha256']}  {name}\\n\")\n")],
        "tests": ["tests/test_backup_atomicity.py::test_the_data_is_fsynced_before_its_rename_and_the_directory_after_it"],
    },
    {
        "name": "skip-unencrypted-copies-them-anyway",
        "promise": "with OFFSITE_SKIP_UNENCRYPTED=1 only backups encrypted by their bytes leave the host",
        "edits": [(OFFSITE, "        wanted = [b for b in wanted if b.name not in unencrypted]\n", "")],
        "tests": ["tests/test_offsite.py::"
                  "test_with_skip_unencrypted_only_the_encrypted_backups_leave_and_the_others_are_named"],
    },
    {
        "name": "drop-previous-is-ignored-by-the-script",
        "promise": "restore_db.sh restore --force --drop-previous drops the replaced database; without it, keeps it",
        "edits": [("module_utils/forge/cli.py", 'keep_previous=not getattr(parsed, "drop_previous", False)',
                   "keep_previous=True")],
        "tests": ["tests/test_restore_safety.py::"
                  "test_a_forced_restore_by_the_script_keeps_or_drops_the_previous_database_as_asked[drop-previous]"],
    },
    {
        "name": "pg-restore-jobs-reads-the-file-not-the-proven-copy",
        "promise": "pg_restore --jobs reads the copy that was proven, never the file as it is now",
        "edits": [(RESTORE, "        with open_backup_file(backup) as handle:\n            if backup.manifest and getattr(",
                   "        with open(backup.path, \"rb\") as handle:\n            if backup.manifest and getattr(")],
        "tests": [BOUNDARIES + "test_an_unencrypted_file_cut_short_once_proven_still_restores_what_was_proven"
                  "[custom-jobs-2]"],
    },
    {
        "name": "checklist-item-3-gives-a-minute-past-26-hours",
        "promise": "checklist item 3 fails a second after the newest backup turned 26 hours old",
        "edits": [("module_utils/forge/checklist.py", '            if age > self.s["backup_max_age_hours"] * 3600:\n',
                   '            if age > self.s["backup_max_age_hours"] * 3600 + 60:\n')],
        "tests": ["tests/test_checklist.py::test_item_3_scheduled_and_fresh_passes_then_fails_when_stale"],
    },
    {
        "name": "checklist-item-4-gives-a-minute-past-the-week",
        "promise": "checklist item 4 fails a second after the last passed drill turned 7 days old",
        "edits": [("module_utils/forge/checklist.py", "            if age > limit:\n", "            if age > limit + 60:\n")],
        "tests": ["tests/test_checklist.py::test_item_4_holds_a_passed_drill_exactly_seven_days[a-second-past-the-week]"],
    },
    {
        "name": "a-nas-without-keys-expires-what-it-cannot-check",
        "promise": "the NAS expires nothing of a database none of whose copies it can check",
        "edits": [(FARSIDE, "            if not any(copies[n].get(\"verified\") for n in names):\n", "            if False:\n")],
        "tests": ["tests/test_offsite_gate.py::test_a_nas_without_its_check_keys_expires_nothing_it_cannot_check"],
    },
    {
        "name": "a-made-up-upload-keeps-a-backups-name",
        "promise": "a signed copy takes its name back from a file the NAS cannot check",
        "edits": [(FARSIDE, "                if not entry.get(\"verified\") or kept_verified:\n", "                if True:\n")],
        "tests": ["tests/test_offsite_gate.py::"
                  "test_a_signed_copy_takes_its_name_back_from_a_made_up_upload_sent_ahead"],
    },
    {
        "name": "the-drill-playbook-passes-a-failed-drill",
        "promise": "playbooks/restore_drill.yml fails when a drill fails (the playbook door of exact counts)",
        "edits": [("roles/backup_operations/tasks/drill.yml",
                   "      and backup_operations_drill_results.results | rejectattr('passed') | list | length == 0\n", "")],
        "tests": ["tests/test_playbooks_check_mode.py::test_the_drill_playbook_fails_when_the_drill_finds_one_row_off"],
    },
    {
        "name": "the-drill-module-reports-ok-on-a-failed-drill",
        "promise": "forge_restore fails its task when a drill fails (the module door of exact counts)",
        "edits": [("library/forge_restore.py",
                   '        if p["mode"] == "drill" and result["passed"] is False and p["fail_on_error"]:\n',
                   "        if False:\n")],
        "tests": ["tests/test_restore.py::test_drill_fails_when_a_backup_restores_but_rows_are_missing"],
    },
    {
        "name": "forge-backup-echoes-its-passphrase",
        "promise": "forge_backup never shows the passphrase or the password in its output (the module door of secrets)",
        "edits": [("library/forge_backup.py", '    passphrase=dict(type="str", no_log=True),\n',
                   '    passphrase=dict(type="str", no_log=False),\n')],
        "tests": ["tests/test_forge_backup_module.py::test_secrets_never_appear_in_module_output"],
    },
    {
        "name": "forge-restore-restores-what-nothing-proves",
        "promise": "forge_restore refuses a file no signed manifest proves unless allow_unverified (module door)",
        "edits": [("library/forge_restore.py", 'allow_unverified=p["allow_unverified"] or p["mode"] != "restore",',
                   "allow_unverified=True,")],
        "tests": ["tests/test_restore.py::test_an_unverified_restore_is_refused_unless_asked_and_touches_nothing"],
    },
    {
        "name": "forge-health-asks-for-libraries-its-checks-do-not-use",
        "promise": "forge_health asks only for the libraries its chosen checks use (an app check needs neither)",
        "edits": [("library/forge_health.py", 'if check in module.params["checks"]]', "]")],
        "tests": ["tests/test_required_libraries.py::test_a_health_check_that_needs_neither_library_runs_without_them"],
    },
    {
        "name": "a-missing-psycopg-is-found-halfway",
        "promise": "a host without psycopg is told so by missing_required_lib before a backup starts",
        "edits": [("library/forge_backup.py", "    if first_missing(POSTGRES):\n", "    if False:\n")],
        "tests": ["tests/test_required_libraries.py::"
                  "test_a_host_without_the_library_is_told_which_one_before_anything_runs[forge_backup]"],
    },
    {
        "name": "check-mode-starts-barmans-receiver",
        "promise": "--check runs only commands that read: never barman cron, which starts the receiver and the slot",
        "edits": [("roles/pitr/tasks/streaming.yml",
                   "  ansible.builtin.command: barman -q cron\n  changed_when: false\n  when: not ansible_check_mode\n",
                   "  ansible.builtin.command: barman -q cron\n  changed_when: false\n  check_mode: false\n")],
        "tests": ["tests/test_check_mode_commands.py::test_every_command_that_runs_in_check_mode_only_reads"],
    },
    {
        "name": "a-nas-check-keys-file-others-may-write-is-used",
        "promise": "the NAS reads its check keys only from a file no one but its owner may write",
        "edits": [(SIGNING, 'data = _read_guarded(path, what, 0o022, ', 'data = _read_guarded(path, what, 0, ')],
        "tests": ["tests/test_offsite_gate.py::test_a_key_file_others_may_write_is_refused_in_one_line"],
    },
    {
        "name": "the-script-says-an-unverified-restore-went-well",
        "promise": "restore_db.sh restore exits 3 (UNVERIFIED), not 0, when no signed manifest proves the file",
        "edits": [("module_utils/forge/cli.py", "    return 0 if report.verified else EXIT_UNVERIFIED\n",
                   "    return 0\n")],
        "tests": ["tests/test_key_rotation.py::test_a_file_without_a_manifest_made_under_the_old_key_restores_with_the_"
                  "retired_passphrase"],
    },
    {
        "name": "the-script-says-a-failed-drill-went-well",
        "promise": "restore_db.sh drill exits 1 on FAIL: cron's mail and the log see it",
        "edits": [("module_utils/forge/cli.py", '.get(report["verdict"], EXIT_FAILURE)', '.get(report["verdict"], 0)')],
        "tests": [BOUNDARIES + "test_a_manifest_one_row_off_fails_the_drill_naming_the_table[custom-one-row-more]"],
    },
    {
        "name": "the-script-forgets-that-encryption-is-required",
        "promise": "with BACKUP_ENCRYPT=1 restore_db.sh never picks an unencrypted backup (script door)",
        "edits": [("module_utils/forge/cli.py", "require_encryption=_encrypt(config, passphrase_file),",
                   "require_encryption=False,")],
        "tests": ["tests/test_doors.py::test_the_script_with_encryption_required_never_picks_an_unencrypted_backup"],
    },
    {
        "name": "the-module-forgets-that-encryption-is-required",
        "promise": "forge_restore with require_encryption never picks an unencrypted backup (module door)",
        "edits": [("library/forge_restore.py", 'require_encryption=p["require_encryption"],',
                   "require_encryption=False,")],
        "tests": ["tests/test_doors.py::test_the_module_with_encryption_required_never_picks_an_unencrypted_backup"],
    },
    {
        "name": "the-module-always-keeps-the-previous-database",
        "promise": "forge_restore with keep_previous=false drops the replaced database (module door)",
        "edits": [("library/forge_restore.py", 'keep_previous=p["keep_previous"],', "keep_previous=True,")],
        "tests": ["tests/test_doors.py::test_the_module_drops_the_previous_database_only_when_keep_previous_is_false"],
    },
    {
        "name": "the-restore-playbook-allows-unverified-restores-by-default",
        "promise": "restore.yml refuses a file no signed manifest proves unless backup_restore_allow_unverified",
        "edits": [("roles/backup_operations/defaults/main.yml", "backup_restore_allow_unverified: false",
                   "backup_restore_allow_unverified: true")],
        "tests": ["tests/test_doors.py::test_the_restore_playbook_refuses_a_file_nothing_proves_unless_asked"],
    },
    {
        "name": "forge-pitr-module-crashes-with-a-traceback",
        "promise": "forge_pitr reports an unexpected failure in one line, never a traceback (module door)",
        "edits": [("library/forge_pitr.py",
                   "    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback\n",
                   "    except ZeroDivisionError as exc:  # noqa: BLE001\n")],
        "tests": ["tests/test_pitr_recovery.py::test_the_module_reports_an_unexpected_failure_in_one_line_without_a_"
                  "traceback"],
    },
    {
        "name": "forge-pitr-cli-crashes-with-a-traceback",
        "promise": "forge pitr reports an unexpected failure in one line, never a traceback (CLI door)",
        "edits": [("module_utils/forge/cli.py",
                   "        except Exception as exc:  # noqa: BLE001 - an operator gets one line, never a traceback\n",
                   "        except ZeroDivisionError as exc:  # noqa: BLE001\n")],
        "tests": ["tests/test_pitr_recovery.py::test_the_cli_reports_an_unexpected_failure_in_one_line_without_a_"
                  "traceback"],
    },
    {
        "name": "forge-pitr-module-runs-as-root",
        "promise": "forge_pitr never runs as root: it refuses in one line before anything changes",
        "edits": [("library/forge_pitr.py", "    if os.geteuid() == 0:\n", "    if os.geteuid() == -1:\n")],
        "tests": ["tests/test_pitr_recovery.py::test_the_module_refuses_to_run_as_root_in_one_line"],
    },
    {
        "name": "scratch-drop-gives-up-on-a-session-it-may-not-end",
        "promise": "a drill never leaves its scratch database behind because autovacuum was at work in it",
        "edits": [("module_utils/forge/pgconn.py",
                   "    except psycopg.errors.InsufficientPrivilege as refused:\n        try:\n",
                   "    except psycopg.errors.InsufficientPrivilege as refused:\n        raise\n        try:\n")],
        "tests": ["tests/test_drill.py::"
                  "test_a_scratch_session_the_login_may_not_end_never_leaves_the_scratch_database_behind_unsaid"],
    },
]

# One mutant per format cell of the guarantee matrix (tests/guarantees.py).
MUTANTS += generated_mutants()
