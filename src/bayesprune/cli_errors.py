"""The command line's error boundary: every error one line on stderr, `--debug` for the rest.

A user who gives a bad config, a read-only folder or a damaged file should read one
line that names the problem and the fix, not a 40-line traceback; a developer
chasing a bug asks for the traceback with `bayesprune --debug ...`. Errors a user
can fix print their own message; anything else prints its type and message and says
how to get the traceback. Either way the exit code is 1.
"""

from __future__ import annotations

import errno
from typing import Any

import click

from .app.schema import ConfigError
from .extras import MissingExtraError
from .io import CheckpointError

# errors whose message is written for the user (the library's own, the OS's)
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    MissingExtraError,  # names the pip command of its extra
    FloatingPointError,
    ValueError,
    OSError,  # FileNotFoundError, PermissionError, disk full, TimeoutError, ...
)
# errors that malformed input (metadata, a hand-edited file) can also raise
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    RecursionError,
    UnicodeError,
)
DEBUG_HINT = "(run with --debug for the traceback)"


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def _os_message(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return f"no space left on the device{where}; free some space and rerun (runs resume)"
    if isinstance(err, PermissionError):
        where = err.filename or "a file"
        return f"permission denied on {where}; make it writable or choose another --out folder"
    return str(err) or type(err).__name__


def describe(err: BaseException) -> str:
    """The one line the CLI prints for `err`."""
    if isinstance(err, OSError) and not isinstance(err, CheckpointError | ConfigError):
        return one_line(_os_message(err))
    if isinstance(err, USER_ERRORS):
        return one_line(str(err) or type(err).__name__)
    if isinstance(err, RecursionError):
        return f"the input nests too deeply to be read (RecursionError) {DEBUG_HINT}"
    detail = one_line(str(err))
    kind = "malformed input" if isinstance(err, INPUT_ERRORS) else "internal error"
    return f"{kind}: {type(err).__name__}: {detail} {DEBUG_HINT}"


class BoundedGroup(click.Group):
    """A click group that turns every exception of its commands into one line (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(describe(err)) from err
