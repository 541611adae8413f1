"""Putting a recovered copy back where the app reads it: the Compose db service's data volume.

On the database host, as root (it drives Docker), after the Barman host serves the recovered
copy (pitr_serve.ScratchServer.serve):

1. before anything stops, a throwaway container on the db service's network proves the copy
   answers there;
2. the app services, then the db service, are stopped;
3. the volume's contents are moved aside into a new volume ``<volume>-before-dr-<stamp>``
   (a rename inside Docker's volume directory: instant, nothing copied, nothing deleted);
4. a throwaway container of the db service's own image runs pg_basebackup of the served copy
   into the now empty volume (TLS pinned to the certificate the copy serves, SCRAM bound to the
   channel, a one-time login whose password reaches it on stdin, never on a command line), and
   pg_verifybackup checks every file against the backup's manifest; the volume's old cluster
   gives back its configuration files when it is the same cluster;
5. the db service starts (it replays the streamed WAL and opens on the recovered timeline),
   the one-time login is dropped, then the app services start, each waited for until healthy.

A failure at 4 or 5 puts the old contents back (the failed copy is kept in
``<volume>-failed-dr-<stamp>``) and starts the services as they were, and says so in one
line. ``undo`` is the way back afterwards: ``forge dr undo --project P --aside <volume>``
swaps the contents back (the put-back ones are kept in ``<volume>-after-dr-<stamp>``)."""

import datetime
import json
import re
import subprocess
import time

from .errors import ForgeError, unexpected

VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
DATA_PATH = "/var/lib/postgresql/data"
ROLLBACK_TIMEOUT = 900

# The start of every script that connects to the served copy, in a throwaway container of the
# db service's image, as root: stdin holds the one-time password (pgpass-escaped) on its first
# line and the certificate the copy serves after it. Every connection is TLS to exactly that
# certificate, SCRAM bound to the channel: nothing else answers for the copy.
CONNECT_PRELUDE = r"""set -eu
host=$1 port=$2 login=$3
secrets=$(mktemp -d)
IFS= read -r password
cat > "$secrets/root.crt"
printf '%s:%s:*:%s:%s\n' "$host" "$port" "$login" "$password" > "$secrets/pgpass"
unset password
chown -R postgres "$secrets"
chmod 0700 "$secrets"
chmod 0600 "$secrets/pgpass" "$secrets/root.crt"
as_postgres() {
    runuser -u postgres -- env PGPASSFILE="$secrets/pgpass" PGSSLMODE=verify-ca PGSSLROOTCERT="$secrets/root.crt" \
        PGCHANNELBINDING=require PGREQUIREAUTH=scram-sha-256 PGCONNECT_TIMEOUT=10 "$@"
}
"""

# Proves the copy answers and is the one served for this put-back (only it knows the password).
PREFLIGHT_SCRIPT = CONNECT_PRELUDE + r"""as_postgres psql -X -A -t -c IDENTIFY_SYSTEM \
    "host=$host port=$port user=$login dbname=replication replication=true" >/dev/null
"""

# The copy into the emptied volume, checked against its manifest. The volume's own cluster,
# moved aside (/aside), gives back its configuration files when it is the same cluster (an
# undo of the last minutes keeps today's settings; a new host takes the base backup's).
BASEBACKUP_SCRIPT = CONNECT_PRELUDE + r"""data=$4
chown postgres:postgres "$data"
chmod 0700 "$data"
as_postgres pg_basebackup --no-password -h "$host" -p "$port" -U "$login" -D "$data" -X stream -c fast
rm -rf "$secrets"
runuser -u postgres -- pg_verifybackup -q "$data"
system_id() { runuser -u postgres -- pg_controldata "$1" | sed -n 's/^Database system identifier: *//p'; }
if [ -s /aside/global/pg_control ] && [ "$(system_id /aside)" = "$(system_id "$data")" ]; then
    for name in postgresql.conf postgresql.auto.conf pg_hba.conf pg_ident.conf; do
        if [ -f "/aside/$name" ] && [ ! -L "/aside/$name" ]; then
            cp "/aside/$name" "$data/$name"
            chown postgres:postgres "$data/$name"
            chmod 0600 "$data/$name"
        fi
    done
    echo "configuration: the volume's own"
else
    echo "configuration: the base backup's"
fi
"""

# Moves one volume's contents into another's, inside Docker's volume directory (one file
# system, so a rename): $1 from, $2 to; the emptied volume gets a new empty _data.
MOVE_SCRIPT = r"""set -eu
rmdir "/volumes/$2/_data"
mv "/volumes/$1/_data" "/volumes/$2/_data"
mkdir -m 0755 "/volumes/$1/_data"
"""


def _stamp(now):
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def pgpass_escape(value):
    return value.replace("\\", "\\\\").replace(":", "\\:")


class Docker:
    """The docker CLI, its failures as its own last line."""

    def __init__(self, command=("docker",)):
        self.command = list(command)

    def run(self, *args, stdin=None, timeout=600):
        try:
            proc = subprocess.run(self.command + list(args), input=stdin, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except FileNotFoundError:
            raise ForgeError(f"{self.command[0]} not found; the put-back runs on the host of the Compose "
                             "project") from None
        except subprocess.TimeoutExpired:
            raise ForgeError(f"docker {args[0]} did not finish within {timeout} s") from None
        if proc.returncode != 0:
            said = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            # pg_basebackup's error, not libpq's note after it ("password retrieved from file ...").
            errors = [line for line in said if re.search(r"error:|FATAL|ERROR", line)]
            raise ForgeError(f"docker {args[0]} failed: {(errors or said or ['exit ' + str(proc.returncode)])[-1]}")
        return proc.stdout

    def inspect(self, kind, name):
        try:
            return json.loads(self.run(kind, "inspect", name, timeout=60))[0]
        except (ValueError, IndexError):
            raise ForgeError(f"docker {kind} inspect {name} returned nothing") from None


class ComposeService:
    """The one container of a Compose project's service, found by its labels (running or not)."""

    def __init__(self, docker, project, service):
        if not NAME_RE.match(project or "") or not NAME_RE.match(service or ""):
            raise ForgeError(f"Compose project and service names are letters, digits, '_', '.' or '-', got "
                             f"{project!r} and {service!r}")
        self.docker, self.project, self.service = docker, project, service
        names = docker.run("ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--filter",
                           f"label=com.docker.compose.service={service}", "--format", "{{.Names}}",
                           timeout=60).split()
        if len(names) != 1:
            raise ForgeError(f"Compose project {project} has {len(names)} containers of service {service}; "
                             "the put-back needs exactly one (docker compose up -d first); nothing was changed")
        self.container = names[0]

    def inspect(self):
        return self.docker.inspect("container", self.container)

    def psql(self, user, database):
        """docker's arguments for psql in the container, over its socket: unaligned, tuples only,
        stopping at the first error."""
        return ["exec", "-i", self.container, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", user,
                "-d", database]

    def running(self):
        return bool(self.inspect()["State"].get("Running"))

    def stop(self):
        self.docker.run("stop", "-t", "120", self.container, timeout=300)

    def start(self):
        self.docker.run("start", self.container, timeout=300)

    def wait_healthy(self, timeout):
        """Until Docker calls it healthy (or running, when it has no healthcheck)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.inspect()["State"]
            health = (state.get("Health") or {}).get("Status")
            if state.get("Running") and health in (None, "healthy"):
                return
            if not state.get("Running") and state.get("Status") in ("exited", "dead"):
                raise ForgeError(f"{self.service} ({self.container}) exited with {state.get('ExitCode')} "
                                 f"after it was started: docker logs {self.container}")
            if time.monotonic() > deadline:
                raise ForgeError(f"{self.service} ({self.container}) was not healthy {timeout} s after it was "
                                 f"started ({health or state.get('Status')})")
            time.sleep(0.5)


class PutBack:
    """The database host's side (see the module text)."""

    def __init__(self, project, db_service="db", app_services=(), docker=None, clock=time.time, log=None,
                 timeout=900):
        self.docker = docker or Docker()
        self.project = project
        self.db = ComposeService(self.docker, project, db_service)
        self.apps = [ComposeService(self.docker, project, name) for name in app_services]
        self.clock = clock
        self.log = log or (lambda line: None)
        self.timeout = timeout
        info = self.db.inspect()
        self.image = info["Config"]["Image"]
        mounts = [m for m in info.get("Mounts", []) if m.get("Destination") == DATA_PATH]
        if len(mounts) != 1 or mounts[0].get("Type") != "volume":
            raise ForgeError(f"{db_service} keeps {DATA_PATH} in {'a bind mount' if mounts else 'no mount'}; "
                             "the put-back swaps a named volume; nothing was changed")
        self.volume = mounts[0]["Name"]
        self.volume_root = self._volume_root(self.volume)
        self.network = next(iter(info.get("NetworkSettings", {}).get("Networks") or {"bridge": None}))

    def _volume_root(self, volume):
        """Docker's directory of local volumes, where a rename moves contents without a copy."""
        if not VOLUME_RE.match(volume):
            raise ForgeError(f"volume name {volume!r} is not one Docker makes; nothing was changed")
        info = self.docker.inspect("volume", volume)
        suffix = f"/{volume}/_data"
        if info.get("Driver") != "local" or not info.get("Mountpoint", "").endswith(suffix) or info.get("Options"):
            raise ForgeError(f"volume {volume} is not a plain local volume (driver {info.get('Driver')}); the "
                             "put-back moves contents inside Docker's volume directory; nothing was changed")
        return info["Mountpoint"][:-len(suffix)]

    def _throwaway(self, *args, network="none", volumes=(), stdin=None, timeout=3600):
        mounts = [arg for volume in volumes for arg in ("-v", volume)]
        return self.docker.run("run", "--rm", "-i", "--network", network, *mounts, "--entrypoint", "sh",
                               "--label", "infer-forge.putback=1", self.image, *args, stdin=stdin, timeout=timeout)

    def _move(self, source, target):
        """Contents of volume ``source`` into the (empty, new) volume ``target``."""
        self._throwaway("-c", MOVE_SCRIPT, "sh", source, target, volumes=[f"{self.volume_root}:/volumes"],
                        timeout=300)

    def _new_volume(self, name, purpose):
        self.docker.run("volume", "create", "--label", f"infer-forge.dr={purpose}", "--label",
                        f"infer-forge.dr.volume={self.volume}", name, timeout=60)
        return name

    def _stop_all(self):
        for app in self.apps:
            if app.running():
                app.stop()
        self.db.stop()

    def _start_all(self, timeout=None):
        self.db.start()
        self.db.wait_healthy(timeout or self.timeout)
        for app in self.apps:
            app.start()
        for app in self.apps:
            app.wait_healthy(timeout or self.timeout)

    def _secrets(self, password, certificate):
        return pgpass_escape(password) + "\n" + certificate

    def preflight(self, host, port, login, password, certificate):
        try:
            self._throwaway("-c", PREFLIGHT_SCRIPT, "sh", host, str(port), login, network=self.network,
                            stdin=self._secrets(password, certificate), timeout=120)
        except ForgeError as exc:
            raise ForgeError(f"the recovered copy at {host}:{port} does not answer as the one served for this "
                             f"put-back on {self.network}, the network of {self.db.container} "
                             f"({exc.message.removeprefix('docker run failed: ')}); nothing was changed") from None

    def _wait_accepting(self, superuser):
        """Until PostgreSQL in the container takes connections: a db service without a Docker
        healthcheck counts as healthy once it runs, while it may still replay the copied WAL."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.docker.run("exec", self.db.container, "pg_isready", "-q", "-U", superuser, "-d", "postgres",
                                timeout=60)
                return
            except ForgeError as exc:
                if time.monotonic() > deadline:
                    raise ForgeError(f"{self.db.service} ({self.db.container}) did not take connections "
                                     f"{self.timeout} s after it was started ({exc.message})") from None
            time.sleep(0.5)

    def _drop_login(self, login, superuser):
        """The one-time login came with the copy; it goes before the app comes back."""
        container = self.db.container
        try:
            self.docker.run(*self.db.psql(superuser, "postgres"), "-c", f'DROP ROLE IF EXISTS "{login}"', timeout=120)
        except ForgeError as exc:
            raise ForgeError(f"the database is back and running, but the put-back's one-time login {login} is still "
                             f"in it ({exc.message}): docker exec {container} psql -U {superuser} -d postgres -c "
                             f"'DROP ROLE {login}'; the app was not started") from None

    def run(self, host, port, login, password, certificate, superuser="infer"):
        """Returns what was done and how long the database and the app were away."""
        if not password or "BEGIN CERTIFICATE" not in (certificate or ""):
            raise ForgeError("the put-back needs the served copy's one-time password and certificate; "
                             "nothing was changed")
        plain_login = re.match(r"^[a-z_][a-z0-9_]{0,62}\Z", login or "")
        if not plain_login or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z", superuser or ""):
            raise ForgeError(f"login and superuser must be plain role names, got {login!r} and {superuser!r}; "
                             "nothing was changed")
        self.preflight(host, port, login, password, certificate)
        stamp = _stamp(self.clock())
        started = time.monotonic()
        done = {"aside": None, "moved": False}
        try:
            self.log(f"stopping {', '.join([a.service for a in self.apps] + [self.db.service])} of {self.project}")
            self._stop_all()
            done["aside"] = aside = self._new_volume(f"{self.volume}-before-dr-{stamp}", "before")
            self._move(self.volume, aside)
            done["moved"] = True
            stopped = round(time.monotonic() - started, 3)
            self.log(f"pg_basebackup of {host}:{port} into {self.volume}")
            said = self._throwaway("-c", BASEBACKUP_SCRIPT, "sh", host, str(port), login, DATA_PATH,
                                   network=self.network,
                                   volumes=[f"{self.volume}:{DATA_PATH}", f"{aside}:/aside:ro"],
                                   stdin=self._secrets(password, certificate), timeout=24 * 3600)
            copied = round(time.monotonic() - started, 3)
            self.db.start()
            self.db.wait_healthy(self.timeout)
            self._wait_accepting(superuser)
            db_ready = round(time.monotonic() - started, 3)
        except BaseException as exc:  # noqa: BLE001 - an interrupt too: the old database comes back first
            self._roll_back(done, stamp, exc)
        result = {"volume": self.volume, "aside_volume": aside, "project": self.project,
                  "seconds_to_stop": stopped, "seconds_to_copy": copied, "seconds_to_database": db_ready,
                  "configuration": "the volume's own" if "configuration: the volume's own" in said else
                                   "the base backup's",
                  "undo": f"forge dr undo --project {self.project} --aside {aside}"}
        try:
            self._drop_login(login, superuser)
            for app in self.apps:
                app.start()
            for app in self.apps:
                app.wait_healthy(self.timeout)
        except ForgeError as exc:
            # The database is put back: what failed after it is said with the way back, and the
            # result goes with it (Barman still has to rejoin this database).
            raise ForgeError(f"put-back into {self.volume} done (database healthy in {db_ready} s; old contents in "
                             f"volume {aside}; undo: {result['undo']}), but {exc.message}", **result) from None
        result["seconds_to_app"] = round(time.monotonic() - started, 3)
        result["app_healthy_at"] = self.clock()  # wall clock: the DR drill's RTO ends here
        return result

    def _roll_back(self, done, stamp, exc):
        """The old contents back in place (the failed copy kept), the services started as they
        were; always raises, in one line that says so."""
        reason = exc.message if isinstance(exc, ForgeError) else (
            "interrupted" if not isinstance(exc, Exception) else unexpected(exc))
        aside, failed = done["aside"], None
        try:
            if done["moved"]:
                if self.db.running():
                    self.db.stop()
                failed = self._new_volume(f"{self.volume}-failed-dr-{stamp}", "failed")
                self._move(self.volume, failed)
                self._move(aside, self.volume)
            elif aside:
                self.docker.run("volume", "rm", aside, timeout=60)  # made empty a moment ago, never used
            # The old database was running minutes ago: giving up on it early helps nobody.
            self._start_all(timeout=max(self.timeout, ROLLBACK_TIMEOUT))
        except ForgeError as again:
            where = (f"its contents are in volume {aside}: forge dr undo --project {self.project} --aside {aside}"
                     if done["moved"] else f"its volume {self.volume} was not touched")
            raise ForgeError(f"put-back into {self.volume} failed: {reason}; putting the old database back "
                             f"failed too: {again.message}; {where}") from None
        kept = f", the failed copy is kept in volume {failed}" if failed else ""
        raise ForgeError(f"put-back into {self.volume} failed: {reason}; the database is back as it was and "
                         f"running{kept}") from None

    def undo(self, aside):
        """Swap the contents moved aside back in; the current ones are kept in a new volume."""
        if not VOLUME_RE.match(aside or "") or not aside.startswith(f"{self.volume}-"):
            raise ForgeError(f"{aside!r} is not a volume the put-back of {self.volume} moved aside; nothing was "
                             "changed")
        info = self.docker.inspect("volume", aside)
        labels = info.get("Labels") or {}
        kind = labels.get("infer-forge.dr")
        if labels.get("infer-forge.dr.volume") != self.volume or kind not in ("before", "after"):
            # A -failed-dr- volume holds a copy that never passed pg_verifybackup.
            raise ForgeError(f"volume {aside} is not contents the put-back of {self.volume} moved aside; nothing was "
                             "changed")
        stamp = _stamp(self.clock())
        self._stop_all()
        after = self._new_volume(f"{self.volume}-after-dr-{stamp}", "after")
        self._move(self.volume, after)
        self._move(aside, self.volume)
        self.docker.run("volume", "rm", aside, timeout=60)  # empty now: its contents are back in place
        self._start_all()
        return {"volume": self.volume, "restored_from": aside, "kept_in": after}
