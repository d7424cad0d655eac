"""Errors that the CLI turns into a one-line message and an exit code."""


class BadInput(Exception):
    """Bad input from a user: a recipe, an argument, a missing run or file. Exit code 2."""


class StoreError(BadInput):
    """A store that cannot be used as asked: a path that is a file, a directory this user may not
    write, a full disk. Exit code 2; the message names the store and says what was expected."""


class ConfigError(BadInput):
    """A config value that is missing, unknown, of the wrong type or out of range.

    `key` is the dotted path (`insert.steps`), `detail` says what was expected and what came.
    """

    def __init__(self, key: str, detail: str, file: str | None = None):
        self.key, self.detail, self.file = key, detail, file
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key or '<top level>'}: {detail}")

    def located(self, file: str | None = None, prefix: str = "") -> "ConfigError":
        """The same error, placed in a file and under a dotted prefix."""
        key = ".".join(p for p in (prefix, self.key) if p)
        return ConfigError(key, self.detail, file or self.file)


def expected(what: str, got: object) -> str:
    return f"expected {what}, got {got!r}"


class RunFailed(Exception):
    """A run that could not finish (diverged loss, an exception inside it). Exit code 1."""
