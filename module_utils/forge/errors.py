"""One exception type whose message is a single line an operator can act on."""


class ForgeError(Exception):
    """A failure explained in one line; never carries a secret."""

    def __init__(self, message, **details):
        super().__init__(" ".join(str(message).split()))
        self.details = details

    @property
    def message(self):
        return self.args[0]
