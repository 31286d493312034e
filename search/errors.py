"""The one exception the CLI turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad input the user can fix; the message says what was wrong and what to do."""
