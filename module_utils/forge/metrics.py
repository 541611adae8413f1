"""Prometheus textfile-collector output, written atomically.

node_exporter reads ``*.prom`` in its textfile directory; the temporary file
of :func:`fsutil.write_atomic` starts with a dot and ends in ``.tmp``, so a
half-written file is never scraped.
"""

import math
import os

from .errors import ForgeError
from .fsutil import read_small_file, write_atomic


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(samples):
    """``samples``: list of (name, type, help, labels dict, value)."""
    lines = []
    described = set()
    for name, kind, help_text, labels, value in samples:
        if name not in described:
            described.add(name)
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
        label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in sorted(labels.items()))
        number = float(value)
        lines.append(f"{name}{{{label_text}}} {int(number) if number.is_integer() else repr(number)}")
    return "\n".join(lines) + "\n"


def write_textfile(directory, filename, samples):
    """Write the samples to ``directory/filename``; returns the path, or None if off."""
    if not directory:
        return None
    if not os.path.isdir(directory):
        raise ForgeError(f"metrics directory {directory} does not exist")
    path = os.path.join(directory, filename)
    # node_exporter runs as its own user and must read the file; it holds no secret.
    write_atomic(path, render(samples), mode=0o644)
    return path


def read_sample(path, name):
    """The value of metric ``name`` in an earlier textfile, or None (to carry a
    last-success timestamp over a failed run)."""
    for line in (read_small_file(path) or "").splitlines():
        if line.startswith(name + "{"):
            try:
                value = float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
            # The records read back are timestamps and small counts; a doctored nan or 1e300
            # would stop whoever turns it into a date (datetime ends at year 9999, ~2.5e11 s).
            return value if math.isfinite(value) and abs(value) < 1e11 else None
    return None


def write_run(directory, filename, prefix, labels, samples, passed, now, success_help):
    """Write the metrics of one run (a drill, an off-site copy) and keep its last success.

    ``samples`` are (name, help, value) without ``prefix``. The run's
    ``last_success_timestamp_seconds`` is ``now`` when it passed, else the value
    the previous file held, so a failure never erases when things last worked.
    Returns an error message, or None.
    """
    path = os.path.join(directory, filename)
    success = now if passed else read_sample(path, prefix + "last_success_timestamp_seconds")
    if success is not None:
        samples = list(samples) + [("last_success_timestamp_seconds", success_help, success)]
    try:
        write_textfile(directory, filename, [(prefix + n, "gauge", h, labels, v) for n, h, v in samples])
    except (ForgeError, OSError) as exc:
        return str(exc)
    return None
