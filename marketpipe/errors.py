"""The one error path for operator-facing failures.

A command (or anything it calls) raises ``UserError`` for a failure the operator can fix: a
broker that does not answer, a bad setting, an unreadable capture file. The ``marketpipe``
command prints it as one ``Error: ...`` line and exits with its code (1, or 2 for usage and
configuration errors); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2


class UserError(click.ClickException):
    """A failure the operator can act on; the message says what is wrong and what to check."""

    default_exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = self.default_exit_code if exit_code is None else exit_code


def user_errors_in(group: BaseExceptionGroup[BaseException]) -> UserError | None:
    """The ``UserError`` to show for an exception group (asyncio task groups) made only of them."""
    matched, rest = group.split(UserError)
    if matched is None or rest is not None:
        return None
    found = _leaves(matched)
    if len(found) == 1:
        return found[0]
    message = "; ".join(dict.fromkeys(str(error.message) for error in found))
    return UserError(message, max(error.exit_code for error in found))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[UserError]:
    leaves: list[UserError] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(_leaves(error))
        elif isinstance(error, UserError):
            leaves.append(error)
    return leaves
