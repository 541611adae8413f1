"""The guarantee matrix: each core promise, cell by cell, and the test that holds each cell.

A promise held on the path its first test was written for can still break one step to the
side: on zstd rather than gzip, for the custom format, with an option at its other value,
through another door. So each promise lists its cells (a format, an option's value, a door)
and, for each, the pytest node id of the test that fails when the cell breaks, or ``NA(why)``
when the cell cannot occur. tests/test_guarantees.py checks that every named test exists and
that every cell is guarded by a mutant in tests/mutants.py that names its test:

- a promise with ``bypass`` gets one mutant per format cell, generated here: the promise's
  guard is skipped for exactly that format (the slip "it works for gzip" hides);
- the other cells are guarded by the hand-written mutants that name their test.

docs/testing.md shows the matrix as a table (``python tests/guarantees.py`` prints it).
"""

BOUNDARIES = "tests/test_boundaries.py::"
SECRETS = "tests/test_child_secrets.py::test_a_restore_hands_its_clients_no_secret_on_their_command_line_or_in_their_"\
          "environment"
GATE = "tests/test_offsite_gate.py::"
RESTORE = "module_utils/forge/restore.py"

# The formats the engine writes, and how a BackupFile (``{v}``) tells each apart.
FORMATS = {
    "plain-gzip": '{v}.dump_format == "plain" and {v}.compression == "gzip" and not {v}.encrypted',
    "plain-gzip-encrypted": '{v}.dump_format == "plain" and {v}.compression == "gzip" and {v}.encrypted',
    "plain-zstd": '{v}.dump_format == "plain" and {v}.compression == "zstd" and not {v}.encrypted',
    "plain-zstd-encrypted": '{v}.dump_format == "plain" and {v}.compression == "zstd" and {v}.encrypted',
    "custom": '{v}.dump_format == "custom" and not {v}.encrypted',
    "custom-encrypted": '{v}.dump_format == "custom" and {v}.encrypted',
}
UNENCRYPTED = [name for name in FORMATS if not name.endswith("-encrypted")]


class NA:
    """A cell that cannot occur, and why."""

    def __init__(self, why):
        self.why = why

    def __repr__(self):
        return f"NA({self.why!r})"


def per_format(test, formats=FORMATS):
    return {f"format={name}": test.format(fmt=name) for name in formats}


MATRIX = {
    "verify before trust: one flipped bit fails verify, before any database is touched": {
        "cells": per_format(BOUNDARIES + "test_one_flipped_bit_anywhere_fails_verify[{fmt}-middle]"),
        "bypass": (RESTORE, "backup", '    expected = (backup.manifest or {}).get("sha256")\n',
                   '    expected = None if ({pred}) else (backup.manifest or {{}}).get("sha256")\n'),
    },
    "signature: a passphrase one character off proves nothing": {
        "cells": dict(
            per_format(BOUNDARIES + "test_a_passphrase_one_character_off_proves_nothing[{fmt}]"),
            **{"door=module (a file nothing proves)": "tests/test_restore.py::"
                                                      "test_an_unverified_restore_is_refused_unless_asked_and_"
                                                      "touches_nothing"}),
        "bypass": ("module_utils/forge/catalog.py", "self", "        problem = self._signature_problem(raw, policy)\n",
                   "        problem = None if ({pred}) else self._signature_problem(raw, policy)\n"),
    },
    "exact counts: a drill fails on one row more or fewer than the snapshot": {
        "cells": dict(
            per_format(BOUNDARIES + "test_a_manifest_one_row_off_fails_the_drill_naming_the_table"
                                    "[{fmt}-one-row-more]"),
            **{"door=module (forge_restore)": "tests/test_restore.py::"
                                              "test_drill_fails_when_a_backup_restores_but_rows_are_missing",
               "door=playbook (restore_drill.yml)": "tests/test_playbooks_check_mode.py::"
                                                    "test_the_drill_playbook_fails_when_the_drill_finds_one_row_off",
               "door=cron": NA("the cron entry runs the script door (restore_db.sh drill, the format cells above) "
                               "with the host's config; molecule/backup proves the entry fires, and it has no code "
                               "of its own between the script and the verdict")}),
        "bypass": ("module_utils/forge/drill.py", "backup",
                   "                mismatches = describe_count_mismatches(expected, actual)\n",
                   "                mismatches = [] if ({pred}) else describe_count_mismatches(expected, actual)\n"),
    },
    "swap restore: a forced restore that does not match its manifest leaves the target as it was": {
        "cells": per_format(BOUNDARIES + "test_a_forced_restore_one_row_off_leaves_the_target_as_it_was"
                                         "[{fmt}-one-row-fewer]"),
        "bypass": (RESTORE, "backup", "        problems = describe_count_mismatches(expected, actual)\n",
                   "        problems = [] if ({pred}) else describe_count_mismatches(expected, actual)\n"),
    },
    "proven bytes: an unencrypted backup is proven whole before streaming, and only the proven copy is restored": {
        "cells": dict(
            per_format(BOUNDARIES + "test_an_unencrypted_file_cut_short_once_proven_still_restores_what_was_proven"
                       "[{fmt}]", UNENCRYPTED),
            **{"format=plain-gzip-encrypted": NA("an encrypted file is proven while it streams (one read); "
                                                 "the cell below holds that promise"),
               "format=plain-zstd-encrypted": NA("as for plain-gzip-encrypted"),
               "format=custom-encrypted": NA("as for plain-gzip-encrypted"),
               "option=--jobs 2": BOUNDARIES + "test_an_unencrypted_file_cut_short_once_proven_still_restores_what_"
                                               "was_proven[custom-jobs-2]"}),
        "bypass": (RESTORE, "backup", "        return backup.manifest is not None and not backup.encrypted\n",
                   "        return backup.manifest is not None and not backup.encrypted and not ({pred})\n"),
    },
    "secrets: no restore client gets a password or passphrase on its command line or in its environment": {
        "cells": {
            "format=plain-gzip": SECRETS + "[plain-gzip]",
            "format=plain-gzip-encrypted": NA("the same psql path as plain-gzip and plain-zstd-encrypted: the "
                                              "client's environment does not depend on the file's compression or "
                                              "encryption, which the engine undoes before the pipe"),
            "format=plain-zstd": NA("as for plain-gzip-encrypted"),
            "format=plain-zstd-encrypted": SECRETS + "[plain-zstd-encrypted]",
            "format=custom": SECRETS + "[custom-streamed]",
            "format=custom-encrypted": SECRETS + "[custom-encrypted]",
            "option=--jobs 2 (pg_restore reads the file)": SECRETS + "[custom-jobs-2-reads-the-file]",
            "door=module (its own output)": "tests/test_forge_backup_module.py::"
                                            "test_secrets_never_appear_in_module_output",
        },
        "bypass": (RESTORE, "backup", "            env = self._env(target, passfile, command)\n",
                   "            env = dict(self._env(target, passfile, command), "
                   "**({{\"PGPASSWORD\": self.settings.password}} if ({pred}) else {{}}))\n"),
    },
    "atomic backup: never visible under its name before its manifest; a killed run leaves only a hidden partial": {
        "cells": {
            "order of the renames": "tests/test_backup_atomicity.py::"
                                    "test_the_data_is_fsynced_before_its_rename_and_the_directory_after_it",
            "format=*": NA("one code path finishes every format (backup.py, after the stream): the order is the "
                           "same bytes of code whatever the format"),
        },
    },
    "atomic swap: the target is never missing, the two renames are one transaction": {
        "cells": {
            "second rename fails": "tests/test_restore_safety.py::"
                                   "test_a_swap_that_cannot_finish_leaves_the_target_under_its_name_with_its_data",
        },
    },
    "options: each at its other value": {
        "cells": {
            "option=OFFSITE_SKIP_UNENCRYPTED=1": "tests/test_offsite.py::"
                                                "test_with_skip_unencrypted_only_the_encrypted_backups_leave_and_the_"
                                                "others_are_named",
            "option=--drop-previous": "tests/test_restore_safety.py::test_a_forced_restore_by_the_script_keeps_or_"
                                      "drops_the_previous_database_as_asked[drop-previous]",
        },
    },
    "off-site: the NAS counts only copies it can check": {
        "cells": {
            "unsigned upload": GATE + "test_a_made_up_upload_under_a_new_name_is_kept_but_never_counted_as_verified",
            "replay under a newer name": GATE + "test_a_real_copy_sent_again_under_a_newer_name_is_quarantined",
            "retention's min_keep": GATE + "test_unverified_uploads_never_keep_a_day_that_retention_would_end",
            "no check key installed": GATE + "test_a_nas_without_its_check_keys_expires_nothing_it_cannot_check",
            "a name sent ahead": GATE + "test_a_signed_copy_takes_its_name_back_from_a_made_up_upload_sent_ahead",
        },
    },
    "health deadlines: a run ends at its timeout whatever a service does": {
        "cells": {
            "app trickles its answer": "tests/test_health.py::"
                                       "test_an_app_that_trickles_its_answer_times_out_within_the_bound",
            "every service down at once": "tests/test_health.py::"
                                          "test_everything_down_is_checked_at_once_each_within_its_timeout",
        },
    },
    "checklist evidence: an item never passes when its evidence says the opposite": {
        "cells": {
            "item 4, a failed drill with a finish time": "tests/test_checklist.py::"
                                                         "test_item_4_fails_on_a_failed_drill_even_with_a_finish_time_"
                                                         "and_an_earlier_pass",
            "item 12, the off-site check never ran": "tests/test_checklist.py::"
                                                     "test_item_12_fails_on_what_point_in_time_recovery_lacks",
        },
    },
    "freshness limits: a second past a limit fails, a second inside it passes": {
        "cells": {
            "item 3, the newest backup at 26 h": "tests/test_checklist.py::"
                                                 "test_item_3_scheduled_and_fresh_passes_then_fails_when_stale",
            "item 4, the last passed drill at 7 days": "tests/test_checklist.py::test_item_4_holds_a_passed_drill_"
                                                       "exactly_seven_days[a-second-past-the-week]",
        },
    },
    "retention and min_keep: only what a key proves is counted or deleted": {
        "cells": {
            "a file without a valid manifest": "tests/test_retention.py::"
                                               "test_files_without_a_valid_manifest_are_never_deleted",
            "min_keep of proven backups": "tests/test_retention.py::test_min_keep_counts_only_backups_proven_good",
            "option=a retired key": "tests/test_key_rotation.py::"
                                    "test_retention_removes_old_key_backups_it_can_prove_and_counts_them_until_then",
            "no key proves it": "tests/test_key_rotation.py::"
                                "test_a_backup_no_configured_key_proves_is_kept_and_said_so",
        },
    },
    "lock and name isolation: one database's run never touches another's": {
        "cells": {
            "the same database twice": "tests/test_backup_script.py::"
                                       "test_a_second_backup_of_the_same_database_fails_in_one_line_and_the_first_"
                                       "completes",
            "similar names (acc, acc_src)": "tests/test_backup_script.py::"
                                            "test_the_sweep_of_stale_partials_never_touches_another_databases_running_"
                                            "backup",
            "a planted lock path": "tests/test_backup_script.py::"
                                   "test_a_lock_path_that_is_not_a_plain_file_is_refused_in_one_line",
        },
    },
    "stalls: every stage has a deadline and names what stalled": {
        "cells": {
            "backup: pg_dump": "tests/test_stalls.py::"
                               "test_a_dump_that_gives_no_output_is_stopped_and_named_in_one_line",
            "backup: the compressor": "tests/test_stalls.py::"
                                      "test_a_compressor_that_stops_is_stopped_and_named_in_one_line",
            "backup: a table lock": "tests/test_stalls.py::"
                                    "test_a_table_lock_held_by_another_session_ends_the_wait_naming_table_and_session",
            "format=plain (psql)": "tests/test_restore_stalls.py::test_a_client_that_stops_ends_the_drill_in_one_line_"
                                   "and_leaves_no_scratch_database[psql-plain]",
            "format=custom (pg_restore)": "tests/test_restore_stalls.py::test_a_client_that_stops_ends_the_drill_in_"
                                          "one_line_and_leaves_no_scratch_database[pg_restore-custom]",
            "restore: a lock held outside": "tests/test_restore_stalls.py::"
                                            "test_a_lock_held_by_another_session_ends_the_restore_naming_the_session",
        },
    },
    "encrypted-only off-site: nothing unencrypted leaves, and a copy counts only verified": {
        "cells": {
            "option=OFFSITE_SKIP_UNENCRYPTED=1": "tests/test_offsite.py::"
                                                "test_with_skip_unencrypted_only_the_encrypted_backups_leave_and_the_"
                                                "others_are_named",
            "target=USB, a copy that does not match": "tests/test_offsite_usb.py::"
                                                      "test_a_copy_that_does_not_match_its_manifest_never_stays_on_the_"
                                                      "usb_disk",
            "target=USB, unplugged": "tests/test_offsite_usb.py::test_an_unplugged_usb_disk_is_refused_in_one_line_and_"
                                     "nothing_lands_on_the_root_file_system",
            "option=a retired key": "tests/test_key_rotation.py::test_old_key_backups_go_off_site_with_the_new_ones",
        },
    },
    "PITR recovery: every target up to the last byte received, and nothing the source configured runs": {
        "cells": {
            "target=a time inside the segment still received": "tests/test_pitr_recovery.py::test_a_time_two_seconds_"
                                                               "before_a_delete_is_recovered_from_the_segment_still_"
                                                               "being_received",
            "target=any, a segment received but not filed": "tests/test_pitr_recovery.py::test_a_segment_received_"
                                                            "whole_but_not_filed_yet_is_replayed_for_every_target",
            "target=a time past the last commit": "tests/test_pitr_recovery.py::test_a_time_at_or_after_the_last_"
                                                  "commit_received_is_refused_in_one_line_before_anything_is_copied",
            "a replay that fails": "tests/test_pitr_recovery.py::test_a_replay_that_ends_in_a_fatal_is_one_line_"
                                   "quoting_it_and_keeps_the_directory_and_its_log",
            "the source's configuration": "tests/test_pitr_recovery.py::test_a_scratch_cluster_runs_nothing_the_source_"
                                          "configured_and_still_recovers",
        },
    },
    "PITR: a replay never takes a WAL segment that is not there": {
        "cells": {
            "a staged segment that cannot be moved": "tests/test_pitr_engine.py::"
                                                     "test_a_staged_segment_that_cannot_be_moved_into_place_is_never_"
                                                     "reported_as_restored",
        },
    },
}


def generated_mutants():
    """One mutant per format cell of each promise with a ``bypass``: its guard skipped for
    exactly that format, killed by the cell's own test."""
    mutants = []
    for promise, entry in MATRIX.items():
        if "bypass" not in entry:
            continue
        path, variable, text, replacement = entry["bypass"]
        for cell, test in entry["cells"].items():
            if isinstance(test, NA) or not cell.startswith("format="):
                continue
            fmt = cell[len("format="):]
            predicate = FORMATS[fmt].format(v=variable)
            mutants.append({
                "name": f"{promise.split(':')[0].replace(' ', '-')}-skipped-for-{fmt}",
                "promise": f"{promise} (format {fmt})",
                "edits": [(path, text, replacement.format(pred=predicate))],
                "tests": [test],
                "generated": True,
            })
    return mutants


def cells():
    """(promise, cell, test or NA) for every cell."""
    return [(promise, cell, test) for promise, entry in MATRIX.items() for cell, test in entry["cells"].items()]


def table():
    lines = ["| promise | cell | held by |", "|---|---|---|"]
    for promise, cell, test in cells():
        held = f"n/a: {test.why}" if isinstance(test, NA) else f"`{test.split('::', 1)[1]}`"
        lines.append(f"| {promise.split(':')[0]} | {cell} | {held} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
