"""One exception type whose message is a single line an operator can act on."""


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
