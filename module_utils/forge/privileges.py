"""Never work as root inside a directory that belongs to someone else.

The backup user owns /backups and can swap any file in it for a symlink at any
moment; whatever root then does there by path (open, chown, chmod, rename)
lands on the link's target, a file of root's. Checking first and acting later
is always a race. So the engine, started as root (an ad-hoc playbook run, an
operator's ``sudo backup_db.sh``), becomes the directory's owner before it
touches anything: files are then created by their owner (no chown at all), and
pg_dump, psql and pg_restore, which read files that user could have planted,
run without root's rights. A directory owned by root itself is root's to use.

Two ways in: the on-host commands switch in place, early, before any secret is
opened; the Ansible modules (whose process Ansible still needs as root to clean
up) run the work in a forked child that switches, and get its result back as
JSON, never as a pickle, since the child is the less trusted side.
"""

import json
import os
import pwd
import signal
import stat

from .errors import ForgeError

_RESULT_LIMIT = 64 * 1024 * 1024


def owner_to_become(directory, log=None):
    """The account that must do the work in ``directory``, or None (not root, no such
    directory yet, or root's own directory)."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(directory)  # through a symlink: what counts is the directory the work lands in
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ForgeError(f"cannot inspect {directory}: {exc.strerror or exc}") from None
    if info.st_uid == 0:
        if info.st_mode & 0o022 and stat.S_ISDIR(info.st_mode):
            # root's own directory, but others could swap files in it (the same race as above):
            # close it first, as the runbook's chmod 700 does; what was planted before is never
            # followed (the engine opens with O_NOFOLLOW and O_EXCL, and lists with lstat).
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    opened = os.fstat(fd)
                    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                        raise OSError(0, "it changed while it was looked at")
                    os.fchmod(fd, 0o700)  # the directory itself, never what a path might now point to
                finally:
                    os.close(fd)
            except OSError as exc:
                raise ForgeError(f"{directory} belongs to root and others may write to it (mode "
                                 f"{info.st_mode & 0o7777:04o}), and it cannot be closed: "
                                 f"{exc.strerror or exc}; nothing was done") from None
            if log:
                log(f"tightened {directory} from {info.st_mode & 0o7777:04o} to 0700 before working in it as root")
        return None
    try:
        return pwd.getpwuid(info.st_uid)
    except KeyError:
        raise ForgeError(f"{directory} belongs to uid {info.st_uid}, which has no account here; refusing to work "
                         "in it as root (chown it to the backup user)") from None


def become(account):
    """Switch this process to ``account`` for good (real, effective and saved ids),
    with that account's groups and home, as `runuser -u` would."""
    os.initgroups(account.pw_name, account.pw_gid)
    os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
    os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
    if os.geteuid() == 0 or os.getuid() == 0:  # pragma: no cover - the kernel refused silently
        raise ForgeError(f"could not switch to {account.pw_name}")
    os.environ.update({"HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name})


def become_directory_owner(directory, log=None):
    """For the on-host commands: switch in place when root was asked to work in
    another user's directory. Returns the account's name, or None."""
    account = owner_to_become(directory, log)
    if account is None:
        return None
    become(account)
    if log:
        log(f"running as {account.pw_name}, the owner of {directory} (started as root)")
    return account.pw_name


def call_as_directory_owner(directory, work):
    """For the modules: ``work()`` (returning a JSON-able dict) runs as the directory's
    owner in a child process when this one is root and the directory is someone
    else's; otherwise here. A ForgeError in the child is raised here with its
    one-line message and details."""
    account = owner_to_become(directory)
    if account is None:
        return work()
    _load_the_whole_engine()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: switch, work, report, never return into the caller
        status = 0
        try:
            os.close(reader)
            try:
                become(account)
                outcome = {"result": work()}
            except ForgeError as exc:
                outcome = {"error": exc.message, "details": exc.details}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(outcome, default=str).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(writer, view):]
        except BaseException:  # noqa: BLE001 - the parent reports an empty answer
            status = 1
        finally:
            os._exit(status)
    os.close(writer)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signal.SIGTERM))
    try:
        chunks, size = [], 0
        while True:
            chunk = os.read(reader, 1024 * 1024)
            if not chunk:
                break
            size += len(chunk)
            if size > _RESULT_LIMIT:
                os.kill(pid, signal.SIGKILL)
                raise ForgeError(f"the engine's answer as {account.pw_name} was larger than "
                                 f"{_RESULT_LIMIT // (1024 * 1024)} MiB; refusing it")
            chunks.append(chunk)
    finally:
        os.close(reader)
        status = os.waitpid(pid, 0)[1]
        signal.signal(signal.SIGTERM, previous)
    try:
        outcome = json.loads(b"".join(chunks))
    except ValueError:
        raise ForgeError(f"the engine stopped as {account.pw_name} without an answer "
                         f"({_describe_status(status)})") from None
    if not isinstance(outcome, dict) or not ("result" in outcome or "error" in outcome):
        raise ForgeError(f"the engine as {account.pw_name} gave an answer it should not have")
    if "error" in outcome:
        details = outcome.get("details") if isinstance(outcome.get("details"), dict) else {}
        raise ForgeError(str(outcome["error"]), **details)
    return outcome["result"]


def _load_the_whole_engine():
    """Import every engine module now: under Ansible the engine is imported from a
    payload in root's private temporary directory, which the child can no longer read."""
    import importlib
    import pkgutil

    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{info.name}")


def _describe_status(status):
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
