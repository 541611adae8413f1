"""One exception type whose message is a single line an operator can act on."""

import re


class ForgeError(Exception):
    """A failure explained in one line; never carries a secret."""

    def __init__(self, message, **details):
        super().__init__(" ".join(str(message).split()))
        self.details = details

    @property
    def message(self):
        return self.args[0]


def last_line(text, default="no error output"):
    """The last non-empty line of a tool's stderr: usually the one that says why."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else default


# PostgreSQL quotes names after these words (``relation "orders"``, ``constraint "orders_pkey"``);
# any other quoted text in an error line is a value from a row, or from the statement.
_NAME_WORDS = frozenset("""
    access aggregate at attribute channel class collation column configuration constraint conversion cursor
    database dictionary directory domain encoding extension family file function index language mapping
    method object operator parameter parser policy portal procedure publication relation role routine rule
    savepoint schema sequence server socket statement subscription table tablespace template trigger type user
    view wrapper
""".split())
_WORD_BEFORE = re.compile(r"([A-Za-z_]+)\s*$")
_BYTES = re.compile(r"0x[0-9A-Fa-f]{2}(?:\s+0x[0-9A-Fa-f]{2})*")
VALUE_HIDDEN = '"(value hidden)"'
REST_HIDDEN = "... (rest hidden)"


def hide_values(line):
    """An error line with the values it quotes hidden and the names it quotes kept:
    ``invalid input syntax for type integer: "(value hidden)"``,
    ``syntax error at or near "(value hidden)"``, ``relation "orders" does not exist``."""
    kept = []
    rest = line
    while True:
        start = rest.find('"')
        if start < 0:
            kept.append(rest)
            break
        word = _WORD_BEFORE.search(rest[:start])
        end = rest.find('"', start + 1)
        if word and word.group(1).lower() in _NAME_WORDS and end > start:
            kept.append(rest[:end + 1])
            rest = rest[end + 1:]
            continue
        # A value may itself hold quotes, or be cut at the line's end: it runs to the last quote.
        end = rest.rfind('"')
        kept.append(rest[:start] + VALUE_HIDDEN + (rest[end + 1:] if end > start else ""))
        break
    return _BYTES.sub("(bytes hidden)", "".join(kept))


_STATEMENT_LINE = re.compile(r"LINE (\d+): ?(.*)")
# The head of a statement: keywords and names, up to the first literal or parenthesis.
_STATEMENT_HEAD = re.compile(r'(?:(?:[A-Za-z_][\w$]*|"[^"]*")(?:\.(?:[A-Za-z_][\w$]*|"[^"]*"))*\s*)*')


def statement_line(line):
    """psql's ``LINE n: <statement text>``, or None for any other line. The text can carry a
    row (an INSERT-format dump): only the first line's head of keywords and names is kept,
    ``LINE 1: INSERT INTO orders VALUES ... (rest hidden)``; a later line (perhaps inside a
    multi-line string) and a line psql cut at its start (``...``) are hidden whole."""
    match = _STATEMENT_LINE.fullmatch(line)
    if not match:
        return None
    number, text = match.groups()
    head = _STATEMENT_HEAD.match(text).group(0).rstrip() if number == "1" else ""
    rest = text[len(head):].strip(" ;")
    return f"LINE {number}: " + " ".join(part for part in (head, REST_HIDDEN if rest else "") if part)


def database_error(text):
    """A PostgreSQL error (a psycopg exception's text) as one line without row data: the
    first line with its values hidden, and the statement line; DETAIL, HINT and CONTEXT
    (``Key (email)=(...)``) are left out."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    statement = next(filter(None, map(statement_line, lines[1:3])), None)
    return " ".join([hide_values(lines[0])] + ([statement] if statement else []))


def unexpected(exc):
    """An exception nobody raised on purpose, as one line for an operator: PostgreSQL's error
    without row data, an OS error with its file, anything else by its type and first line."""
    if isinstance(exc, ForgeError):
        return exc.message
    if hasattr(exc, "sqlstate"):
        return database_error(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    first = last_line(str(exc).splitlines()[0] if str(exc).strip() else "", default="")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
