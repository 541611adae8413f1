"""The restore engine: restore a proven backup into a database, or not at all.

verify.py proves the file first (the manifest's signature, its checksum, the passphrase that
opens it) and streams it: bytes -> SHA-256 -> decrypt -> decompress, with bounded memory and no
plaintext on disk, the SHA-256 of exactly the bytes streamed compared with the manifest at the
end, so a file swapped or changed after the check is caught. Here that stream goes into psql or
pg_restore (fed and watched by clientwatch.py), into a side database that takes the target's name
only when complete and its row counts match; a failure at any point leaves the target as it was.
"""

import json
import os
import re
import subprocess
import threading
import time

from . import catalog, compress, opensslenc, signing
from .clientwatch import ClientWatch, Feeder, maintenance_db, wait_for
from .errors import ForgeError, database_error, hide_values, statement_line
from .fsutil import pin_malloc_mmap_threshold
from .pgconn import (
    PassFile,
    client_major_version,
    count_rows_in_parallel,
    drop_database,
    passed_fds,
    runs_in_container,
    runs_through_wrapper,
    with_container_env,
)
from .verify import (
    UNVERIFIED,
    VerifyReport,
    check_digest,
    open_backup_file,
    opening_passphrase,
    plaintext_chunks,
    prove_checksum,
    release_private_copy,
    restricted,
    select_backup,
    verify_file,
)

DEFAULT_SESSION_SETTINGS = {"maintenance_work_mem": "256MB", "synchronous_commit": "off"}


class RestoreOptions:
    def __init__(self, backup_dir="/backups", passphrase_file=None, jobs=None, force=False, create=True,
                 owner=None, session_settings=None, psql_command=None, pg_restore_command=None, verify=True,
                 comment=None, keep_previous=True, require_encryption=None, check_counts=True,
                 kdf_iterations=None, passphrase=None, allow_unverified=True, retired_passphrases_file=None,
                 retired_passphrases=(), stall_timeout=300):
        self.backup_dir = backup_dir
        self.passphrase_file = passphrase_file
        # The passphrase itself, instead of its file (a module's vault value); it wins over the file.
        self.passphrase = passphrase
        # Key rotation: earlier passphrases, which read (prove and decrypt) the backups they made.
        self.retired_passphrases_file = retired_passphrases_file
        self.retired_passphrases = list(retired_passphrases or ())
        self.jobs = jobs
        self.force = force
        self.create = create
        self.owner = owner
        self.session_settings = DEFAULT_SESSION_SETTINGS if session_settings is None else session_settings
        self.psql_command = list(psql_command or ["psql"])
        self.pg_restore_command = list(pg_restore_command or ["pg_restore"])
        self.verify = verify
        self.comment = comment
        # A forced restore renames the database it replaces instead of dropping it.
        self.keep_previous = keep_previous
        # Like the backup side: with a passphrase, encrypted backups are expected.
        self.require_encryption = (bool(passphrase_file or passphrase) if require_encryption is None
                                   else bool(require_encryption))
        # Compare the restored copy's row counts with the manifest before it goes live.
        self.check_counts = check_counts
        # A named file without a signed manifest restores as UNVERIFIED (the CLI's exit 3); the
        # module refuses it unless asked, so a playbook's "ok" always means a proven backup.
        self.allow_unverified = allow_unverified
        # PBKDF2 iterations for an encrypted file whose manifest does not record them (BACKUP_KDF_ITER).
        self.kdf_iterations = opensslenc.kdf_iterations(kdf_iterations)
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise ForgeError(f"jobs must be a whole number >= 1, got {jobs!r}")
        # psql or pg_restore taking no input and none of its sessions working on the server for this
        # long (or one waiting this long for a lock) is stopped, and the restore ends naming it.
        if isinstance(stall_timeout, bool) or not isinstance(stall_timeout, int) or stall_timeout < 2:
            raise ForgeError(f"stall_timeout must be a whole number >= 2, got {stall_timeout!r}")
        self.stall_timeout = stall_timeout


IN_PROGRESS_COMMENT = "infer-forge restore in progress into "
PREVIOUS_COMMENT = "infer-forge: {target} as it was before the restore of {file} at {when}"
MAX_IDENTIFIER_BYTES = 63
SWAP_ATTEMPTS = 5


class Restorer:
    """Restores a verified backup without ever putting the target at risk.

    Every restore goes into a side database first. Only when the stream ended
    complete and the row counts match the manifest does the side database take
    the target's name: for a new target by one rename, for a target that has
    tables (force) by two renames in one transaction, the old database keeping
    a ``_before_restore_<time>`` name (or dropped when keep_previous is off).
    Any failure before that drops the side database; the target is untouched.
    An existing empty target is restored into directly, in one transaction.
    """

    def __init__(self, options, settings, log=None):
        self.options = options
        self.settings = settings
        self.log = log or (lambda line: None)
        self._passphrase = None
        self._retired = None
        # The client's sessions carry a name of this restore alone: the stall watch finds them by it.
        self._client_name = f"infer-forge-restore-{os.urandom(6).hex()}"

    @property
    def jobs(self):
        """pg_restore jobs for an unencrypted custom-format dump: one per CPU unless set."""
        return self.options.jobs or compress.default_workers()

    def configured_passphrase(self):
        if self._passphrase is None:
            self._passphrase = signing.load_passphrase(self.options.passphrase, self.options.passphrase_file)
        return self._passphrase

    def retired_passphrases(self):
        if self._retired is None:
            self._retired = signing.load_keyring(self.options.retired_passphrases,
                                                 self.options.retired_passphrases_file)
        return self._retired

    def policy(self):
        return catalog.TrustPolicy(self.configured_passphrase(), require_encryption=self.options.require_encryption,
                                   retired=self.retired_passphrases())

    def select(self, database=None, path=None):
        return select_backup(self.options.backup_dir, database, path, self.policy())

    def passphrase(self, backup):
        if not backup.encrypted:
            return None
        if getattr(backup, "legacy_passphrase", None):
            return backup.legacy_passphrase
        if getattr(backup, "key_passphrase", None):
            return backup.key_passphrase  # a retired key proved its manifest: that key made the file
        if not (self.options.passphrase_file or self.options.passphrase):
            raise ForgeError(f"{backup.name} is encrypted; a passphrase file is needed to restore it")
        if backup.manifest is None and not backup.legacy and self.retired_passphrases():
            # No manifest names the key (a file the runbook's commands made, or a copy brought back
            # without its manifest): the passphrase whose decryption starts like the file's format.
            return opening_passphrase(backup, [self.configured_passphrase(), *self.retired_passphrases()],
                                      self.options.kdf_iterations)
        return self.configured_passphrase()

    # -- the restore ----------------------------------------------------------
    def restore(self, backup, target, database=None, check_mode=False):
        import psycopg

        # Before the first large buffer, not after.
        pin_malloc_mmap_threshold()
        started = time.monotonic()
        check_target_name(target)
        self._check_client(backup)
        if self.options.verify:
            # The file's SHA-256 (or a file without a manifest) is proven while it streams; check
            # mode streams nothing, so it reads the file here.
            report = verify_file(backup, self.passphrase(backup), database, read=check_mode,
                                 kdf_iterations=self.options.kdf_iterations)
        else:
            report = VerifyReport(verdict=UNVERIFIED)
        if report.get("verdict") == UNVERIFIED and not self.options.allow_unverified:
            raise ForgeError(f"{backup.name} has no signed manifest that proves what it holds, so its restore would be "
                             "UNVERIFIED; set allow_unverified (playbooks: backup_restore_allow_unverified) to restore "
                             f"it anyway; {target} was not touched")
        passphrase = self.passphrase(backup)
        report["target"] = target
        try:
            with self.settings.connect(database=maintenance_db(target)) as control:
                if report.get("verdict") == UNVERIFIED:
                    self._refuse_unverified_as_superuser(control, backup, target)
                if not check_mode:
                    self._lock(control, target)
                plan, objects = self._plan(control, target)
                sessions = _sessions(control, target) if plan != "new" else []
                if check_mode:
                    report.update(changed=True, target_state=f"would {_PLAN_WORDS[plan]}",
                                  sessions=[_describe_session(item) for item in sessions])
                    if plan == "replace":
                        report["previous_database"] = (_previous_name(target) if self.options.keep_previous
                                                       else None)
                    return report
                where = {"new": f"{target} was not created",
                         "empty": f"{target} is unchanged (still empty)",
                         "replace": f"{target} is unchanged ({objects}, as before)"}[plan]
                if self.options.verify and self._proven_before_streaming(backup):
                    try:
                        prove_checksum(backup, report, keep_copy=True)
                    except ForgeError as exc:
                        raise ForgeError(f"{exc.message}; {where}") from None
                self._drop_stale_sides(control, target)
                side = self._create_side(control, target, plan != "new")
                try:
                    self.log(f"Restoring {backup.name} into {side} (the side database for {target})")
                    try:
                        self._into(backup, side, passphrase, report)
                    finally:
                        release_private_copy(backup)
                    self._compare_counts(backup, side, report)
                    if plan == "new":
                        self._rename_new(control, side, target)
                        report["target_state"] = "created"
                    else:
                        # An empty target holds nothing to keep.
                        keep = self.options.keep_previous and plan == "replace"
                        report.update(self._swap(control, side, target, backup, keep))
                        if plan == "empty":
                            report["target_state"] = "replaced the empty database"
                except BaseException as exc:
                    self._drop(control, side)
                    if isinstance(exc, (ForgeError, psycopg.Error)):
                        raise ForgeError(f"{_one_line(exc)}; {where}") from None
                    raise
        except psycopg.Error as exc:
            raise ForgeError(f"{_one_line(exc)}; nothing was changed") from None
        report["changed"] = True
        report["duration"] = round(time.monotonic() - started, 3)
        return report

    # -- steps ------------------------------------------------------------------
    def _refuse_unverified_as_superuser(self, control, backup, target):
        """A file nothing proves may hold any SQL (COPY ... FROM PROGRAM, DROP DATABASE of another
        database): it never runs where a superuser logged in. Root's wrapper logs in as a role that
        is none. RESTORE_OWNER does not make a superuser login safe: the file's own `SET ROLE NONE`
        takes the session back to the login."""
        client = self.options.psql_command if backup.dump_format == "plain" else self.options.pg_restore_command
        if runs_through_wrapper(client):
            return
        row = control.execute("SELECT rolname FROM pg_roles WHERE rolname IN (current_user, %s) AND rolsuper "
                              "ORDER BY rolname = current_user DESC", (self.options.owner,)).fetchone()
        if row is not None:
            raise ForgeError(f"{backup.name} has no signed manifest, and its SQL would run where the superuser "
                             f"{row[0]} is logged in: restore it with a login that is no superuser (POSTGRES_USER), "
                             f"or through the Compose wrapper; {target} was not touched")

    def _check_client(self, backup):
        """A pg_restore older than the pg_dump that wrote a custom-format file cannot read its
        header; say what to do before any database is touched, not pg_restore's own words after."""
        if backup.dump_format != "custom" or not isinstance(backup.manifest, dict):
            return
        dump_major = backup.manifest.get("pg_dump_major_version")
        if not isinstance(dump_major, int):
            return
        command = self.options.pg_restore_command
        client_major = client_major_version(command)
        if client_major < dump_major:
            where = "on this host" if command == ["pg_restore"] else f"of {' '.join(command)!r}"
            raise ForgeError(
                f"pg_restore {client_major} {where} cannot read a custom-format dump of pg_dump {dump_major}; set "
                f"RESTORE_PG_RESTORE_COMMAND (role: backup_restore_pg_restore_command) to a pg_restore {dump_major} "
                "such as 'docker exec -i <db container> pg_restore'; nothing was changed")

    def _plan(self, control, target):
        """'new', 'empty' or 'replace', and what the target holds, in words."""
        exists = control.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
        if not exists:
            if not self.options.create:
                raise ForgeError(f"target database {target!r} does not exist (set create to make it)")
            return "new", "nothing"
        with self.settings.connect(database=target) as conn:
            tables, others = conn.execute(_CONTENTS_QUERY).fetchone()
            ours = conn.info.backend_pid
        _wait_until_gone(control, ours)
        if tables == 0 and others == 0:
            return "empty", "empty"
        held = f"{tables} tables" if tables else f"{others} objects (views, sequences, functions or large objects)"
        if not self.options.force:
            raise ForgeError(f"target database {target!r} already has {held}; restoring would "
                             "overwrite data (force: true, or --force, restores beside it and swaps it in "
                             "only when complete)")
        return "replace", held

    def _lock(self, control, target):
        """One restore into a target at a time, across hosts (a session-level advisory lock)."""
        held = control.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                               ("infer-forge restore into " + target,)).fetchone()[0]
        if not held:
            raise ForgeError(f"another restore into {target!r} is running; nothing was changed")

    def _drop_stale_sides(self, control, target):
        """Side databases of a restore into ``target`` that died (server crash, kill -9).
        Safe under the advisory lock: no living restore owns them. A side is marked by its
        comment; one that died between CREATE DATABASE and COMMENT (two statements: CREATE
        DATABASE cannot run in a transaction) has no comment, only the side's exact name."""
        rows = control.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE shobj_description(oid, 'pg_database') = %s OR (shobj_description(oid, 'pg_database') IS NULL "
            "AND datname ~ '_restoring_[0-9a-f]{8}$')",
            (_in_progress_comment(target),)).fetchall()
        for name, comment in rows:
            if comment is None and name != derived_name(target, name[-len(_SIDE_SUFFIX_EXAMPLE):]):
                continue
            self.log(f"Dropping {name}, left by an interrupted restore into {target}")
            self._drop(control, name)

    def _create_side(self, control, target, exists):
        from psycopg import sql

        side = derived_name(target, f"_restoring_{os.urandom(4).hex()}")
        query = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(side))
        if self.options.owner:
            query = query + sql.SQL(" OWNER {}").format(sql.Identifier(self.options.owner))
        if exists:
            # Where the operator put the target (a tablespace of its own) is where its data goes.
            space = control.execute("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t "
                                    "ON t.oid = d.dattablespace WHERE d.datname = %s", (target,)).fetchone()
            if space and space[0] != "pg_default":
                query = query + sql.SQL(" TABLESPACE {}").format(sql.Identifier(space[0]))
        try:
            control.execute(query)
            control.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(side), sql.Literal(_in_progress_comment(target))))
        except Exception as exc:  # noqa: BLE001 - psycopg errors become one line
            self._drop(control, side)
            raise ForgeError(f"cannot create database {side!r}: {' '.join(str(exc).split())}") from None
        return side

    def _compare_counts(self, backup, side, report):
        expected = (backup.manifest or {}).get("snapshot_row_counts")
        if not self.options.check_counts or expected is None:
            return
        actual = count_rows_in_parallel(lambda: self.settings.connect(database=side), self.jobs)
        problems = describe_count_mismatches(expected, actual)
        if problems:
            raise ForgeError("the restored copy does not match the backup's manifest: " + "; ".join(problems[:5]))
        report.passed("row_counts")
        report["tables_checked"] = len(actual)
        report["rows_checked"] = sum(actual.values())

    def _rename_new(self, control, side, target):
        from psycopg import sql

        try:
            with control.transaction():
                control.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(side), sql.Identifier(target)))
                control.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(target), sql.Literal(self.options.comment)))
        except Exception as exc:  # noqa: BLE001 - psycopg errors become one line
            raise ForgeError(f"cannot rename {side!r} to {target!r}: {' '.join(str(exc).split())}") from None

    def _swap(self, control, side, target, backup, keep):
        """Ends the target's sessions (saying which) and renames old away and new in, atomically."""
        import psycopg
        from psycopg import sql

        when = time.strftime("%Y%m%d_%H%M%S")
        previous = _previous_name(target, when)
        ended = []
        in_use = None
        for _attempt in range(SWAP_ATTEMPTS):
            sessions = _sessions(control, target)
            for session in sessions:
                text = _describe_session(session)
                self.log(f"Ending session on {target}: {text}")
                try:
                    control.execute("SELECT pg_terminate_backend(%s, 5000)", (session[0],))
                except psycopg.Error as exc:
                    raise ForgeError(f"cannot end session {text} on {target!r}: "
                                     f"{' '.join(str(exc).split())}") from None
                ended.append(text)
            try:
                with control.transaction():
                    control.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(target), sql.Identifier(previous)))
                    control.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(side), sql.Identifier(target)))
                    control.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(target), sql.Literal(self.options.comment)))
                    control.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(previous), sql.Literal(PREVIOUS_COMMENT.format(
                            target=target, file=backup.name, when=when))))
                break
            except psycopg.errors.ObjectInUse as exc:
                # A client reconnected between the terminate and the rename, or holds the copy open;
                # both renames rolled back together.
                in_use = " ".join(str(exc).split())
                continue
            except psycopg.Error as exc:
                raise ForgeError(f"cannot swap the restored copy in: {' '.join(str(exc).split())}") from None
        else:
            raise ForgeError(f"cannot swap the restored copy in after {SWAP_ATTEMPTS} attempts: {in_use}")
        result = {"target_state": "replaced", "sessions_ended": ended}
        if keep:
            self.log(f"Restored {backup.name} into {target}; the previous database is kept as {previous}")
            result["previous_database"] = previous
        else:
            self._drop(control, previous)
            self.log(f"Restored {backup.name} into {target}; the previous database was dropped")
            result["previous_database"] = None
        return result

    def _drop(self, control, name):
        try:
            drop_database(control, name, if_exists=True)
        except Exception as exc:  # noqa: BLE001 - the caller's error is the one to report
            self.log(f"could not drop {name}: {' '.join(str(exc).split())}")

    def _proven_before_streaming(self, backup):
        """An unencrypted file with a manifest is read whole and its SHA-256 compared before any
        byte reaches psql or pg_restore: whoever can write to the backup directory can rewrite it,
        and SQL after the file's own COMMIT would run for good before the stream's end showed the
        mismatch. The bytes proven are copied, and only the copy is restored, pg_restore --jobs
        included. An encrypted one cannot be rewritten without the passphrase, so it is proven
        while it streams (one read)."""
        return backup.manifest is not None and not backup.encrypted

    def _reads_the_file(self, backup):
        """pg_restore --jobs reads the file itself; everything else is streamed through us.
        A pg_restore in the database's container cannot open our file: it gets the stream."""
        if runs_in_container(self.options.pg_restore_command):
            return False
        return backup.dump_format == "custom" and not backup.encrypted and self.jobs > 1

    def _into(self, backup, database, passphrase, report):
        if self._reads_the_file(backup):
            self._pg_restore_file(backup, database, report)
        else:
            self._stream(backup, database, passphrase, report)

    def _env(self, target, passfile, command=None):
        env = self.settings.with_database(target).libpq_env(passfile)
        if command is not None and runs_in_container(command) and self.settings.password:
            # `docker exec -e PGPASSWORD` copies the value from our environment, never argv;
            # the in-memory password file is on this host, out of the container's reach.
            env.pop("PGPASSFILE", None)
            env["PGPASSWORD"] = self.settings.password
        settings = dict(self.options.session_settings or {})
        if self.options.owner and not runs_through_wrapper(command):
            # The dump's SQL runs with the owner's rights, not the login's (often the superuser):
            # the session takes the role as it starts, before the first statement of the file.
            settings["role"] = self.options.owner.replace("\\", "\\\\").replace(" ", "\\ ")
        if settings:
            env["PGOPTIONS"] = " ".join(f"-c {key}={value}" for key, value in settings.items())
        env["PGAPPNAME"] = self._client_name
        return env

    def _watch(self, tool, database, stop):
        return ClientWatch(self.settings, self._client_name, database, tool, self.options.stall_timeout, stop)

    def _pg_restore_file(self, backup, target, report):
        """pg_restore --jobs needs a seekable file: it reads, through our open descriptor, the private
        copy proven before the restore, or (with verification off) the file hashed just before."""
        with open_backup_file(backup) as handle:
            if backup.manifest and getattr(backup, "private_copy", None) is None:
                check_digest(backup, handle)
                handle.seek(0)
                report.passed("sha256")
            fd = handle.fileno()
            command = self.options.pg_restore_command + [
                "--no-owner", "--no-privileges", "--exit-on-error", f"--jobs={self.jobs}",
                f"--dbname={dbname_conninfo(target)}", f"/dev/fd/{fd}"]
            with PassFile(self.settings.password) as passfile:
                proc = subprocess.Popen(command, env=self._env(target, passfile), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, pass_fds=(fd, *passed_fds(passfile)))
                watch = self._watch("pg_restore", target, proc.kill)
                watch.start()
                watch.waiting()
                try:
                    stderr = proc.communicate()[1]
                finally:
                    watch.end()
        if watch.stalled:
            raise ForgeError(f"restore stopped: {watch.stalled}")
        if proc.returncode != 0:
            raise ForgeError(f"pg_restore failed: {_first_error(stderr)}")

    def _stream(self, backup, target, passphrase, report):
        if backup.dump_format == "plain":
            command = self.options.psql_command + ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                                                   "-o", "/dev/null", "-f", "-"]
        else:
            command = self.options.pg_restore_command + ["--no-owner", "--no-privileges", "--exit-on-error",
                                                         "--single-transaction", f"--dbname={dbname_conninfo(target)}"]
        with PassFile(self.settings.password) as passfile:
            env = self._env(target, passfile, command)
            proc = subprocess.Popen(with_container_env(command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env, pass_fds=passed_fds(passfile))
            errors = []
            reader = threading.Thread(target=_collect, args=(proc.stderr, errors), daemon=True)
            reader.start()
            chunks = plaintext_chunks(backup, passphrase, report=report, kdf_iterations=self.options.kdf_iterations)
            restrict = backup.dump_format == "plain"
            if restrict:
                chunks = restricted(chunks)

            def psql_error(default):
                text = "".join(errors)
                return _first_error(_restricted_error(text) if restrict else text) or default

            tool = "psql" if backup.dump_format == "plain" else "pg_restore"
            watch = self._watch(tool, target, proc.kill)
            watch.start()
            # The stream is fed from a thread of its own, so that a write the watch cannot free (a
            # client whose process was killed while a child of it still holds the pipe, as root's
            # wrapper does under sudo) never holds the restore: this thread stops waiting instead.
            feeder = Feeder(chunks, proc, watch)
            try:
                feeder.start()
                while feeder.is_alive() and not (watch.stalled and feeder.wait_seconds() > 2):
                    feeder.join(timeout=0.5)
                if not feeder.is_alive() and feeder.error is None:
                    watch.waiting()
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
                wait_for(proc, watch)
                reader.join(timeout=2 if watch.stalled else None)
            except BaseException:
                # Kill before closing stdin: psql must not commit a damaged stream.
                proc.kill()
                raise
            finally:
                watch.end()
        if watch.stalled:
            raise ForgeError(f"restore stopped: {watch.stalled}")
        if isinstance(feeder.error, BrokenPipeError):
            raise _stopped(backup, psql_error("the client exited early"))
        if feeder.error is not None:
            raise feeder.error
        if proc.returncode != 0:
            raise _stopped(backup, psql_error(f"exit {proc.returncode}"))


def _stopped(backup, client_error):
    """The error for a client that stopped before the stream's end. A damaged file can decompress
    into SQL that psql rejects before our checksum is reached: then the damage is the cause to name."""
    if backup.manifest:
        try:
            with open_backup_file(backup) as handle:
                check_digest(backup, handle)
        except ForgeError as exc:
            return exc
    return ForgeError(f"restore stopped: {client_error}")


def _restricted_error(text):
    """psql's messages for a stream that starts with our ``\\restrict`` line: line numbers of the file."""
    if "invalid command \\restrict" in text:
        return ("error: this psql has no \\restrict (psql 15.14, 16.10, 17.6 or later is needed to restore a file "
                "without a signed manifest safely)")
    return re.sub(r"psql:<stdin>:(\d+):", lambda match: f"psql:<stdin>:{int(match.group(1)) - 1}:", text)


_PLAN_WORDS = {"new": "create it", "empty": "restore beside the empty database and swap it in",
               "replace": "restore beside it and swap it in"}
# What a target holds: tables, and anything else a restore would replace.
_CONTENTS_QUERY = """
    SELECT count(*) FILTER (WHERE c.relkind IN ('r', 'p')),
           count(*) FILTER (WHERE c.relkind NOT IN ('r', 'p'))
           + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
           + (SELECT count(*) FROM pg_largeobject_metadata)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
"""


def check_target_name(target):
    """PostgreSQL cuts names at 63 bytes, so a longer one would name another database;
    the templates are copied into every new database."""
    if not target:
        raise ForgeError("no target database given")
    if len(target.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ForgeError(f"target database name {target!r} is longer than PostgreSQL's 63 bytes")
    if target in ("template0", "template1"):
        raise ForgeError(f"refusing to restore into {target}: every new database is copied from it")


def _one_line(exc):
    return exc.message if isinstance(exc, ForgeError) else database_error(exc)


def describe_count_mismatches(expected, actual):
    """One line per table that is missing, extra, or has another row count than the snapshot."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = [t for t in sorted(set(expected) & set(actual)) if expected[t] != actual[t]]
    return ([f"table {t} missing after restore" for t in missing]
            + [f"table {t} not in the backup's manifest" for t in extra]
            + [f"{t}: {actual[t]} rows restored, {expected[t]} in the snapshot" for t in wrong])


def _sessions(control, target):
    """The target's sessions: every backend a role runs there, not autovacuum, which has no role,
    which only a superuser may signal, and which PostgreSQL ends itself when the database is
    renamed; nor a parallel worker, which goes with its leader's session. The filter reads only
    columns any login sees: another role's session shows NULL in most (backend_type too), and
    must still be named."""
    return control.execute(
        "SELECT pid, usename, application_name, coalesce(client_addr::text, 'local') FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() AND usesysid IS NOT NULL "
        "AND leader_pid IS NULL ORDER BY pid", (target,)).fetchall()


def _wait_until_gone(control, pid, seconds=5.0):
    """A closed connection's backend stays in pg_stat_activity until it has finished exiting:
    wait for it, so a restore never names (or ends) its own finished session as the target's."""
    deadline = time.monotonic() + seconds
    while control.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _describe_session(session):
    pid, user, application, client = session
    return f"pid {pid} user {user} from {client}" + (f" ({application})" if application else "")


# A side database's suffix: "_restoring_" and 8 hex digits (see _create_side).
_SIDE_SUFFIX_EXAMPLE = "_restoring_00000000"


def _in_progress_comment(target):
    return IN_PROGRESS_COMMENT + json.dumps(target)


def derived_name(target, suffix):
    """``target`` + ``suffix``, cut to PostgreSQL's 63-byte identifier limit on a character boundary."""
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode("utf-8"))
    head = target.encode("utf-8")[:room].decode("utf-8", "ignore")
    return head + suffix


def _previous_name(target, when=None):
    return derived_name(target, f"_before_restore_{when or time.strftime('%Y%m%d_%H%M%S')}")


def dbname_conninfo(name):
    """pg_restore takes --dbname as a connection string when it contains '=';
    quoting it as one always keeps any database name literal."""
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _collect(stream, sink):
    for raw in stream:
        sink.append(raw.decode("utf-8", "replace"))
        if len(sink) > 200:
            del sink[50:150]


def _first_error(text):
    """The first ERROR/FATAL line with the statement's position, as one line.

    Row values must not reach logs or Sentry, so DETAIL, HINT and CONTEXT lines are
    left out (``Key (email)=(...)``, ``COPY orders, line 5: "..."``), values quoted in
    the error line are hidden (``invalid input syntax for type integer: "..."``), and
    of the statement's LINE only its head is kept (see errors.statement_line).
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "ERROR:" in line or "FATAL:" in line or "error:" in line:
            context = [item for item in map(statement_line, lines[index + 1:index + 3]) if item]
            return " ".join([hide_values(line)] + context)[:500]
    return hide_values(lines[-1] if lines else "")[:500]
