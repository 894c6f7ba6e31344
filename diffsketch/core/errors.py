"""The one base class of every expected error.

Every failure a user can cause or fix (bad params, a missing or corrupt file, an unreachable model,
a full disk, a damaged store) raises a subclass of :class:`DiffsketchError` whose message names the
problem and the fix, in one line. The command line catches this one type and prints the message
without a traceback; anything else is a bug and keeps its traceback.

Example:
    >>> from diffsketch.core.errors import DiffsketchError
    >>> class ThingError(DiffsketchError, ValueError):
    ...     pass
    >>> try:
    ...     raise ThingError("thing.yaml is empty; write at least one thing into it")
    ... except DiffsketchError as err:
    ...     print(err)
    thing.yaml is empty; write at least one thing into it
"""


class DiffsketchError(Exception):
    """An expected failure; its message says what is wrong and how to fix it."""
