"""The exceptions the CLI turns into one line: bad input (exit 2) and a search that failed (exit 1)."""


class UsageError(Exception):
    """Bad input the user can fix; the message says what was wrong and what to do. Exit code 2."""


class SearchError(Exception):
    """The input was fine but the search could not do its work (every trial failed, Ray stopped, ...).

    The message says why and where to look. Exit code 1.
    """
