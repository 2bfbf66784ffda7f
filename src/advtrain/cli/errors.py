"""The console scripts' errors: :class:`ConfigError` for a configuration that cannot run, and
one-line messages for failures outside advtrain's control (a full disk, a read-only folder)."""

from __future__ import annotations

import errno
import sys
from typing import NoReturn

from hydra.errors import ConfigCompositionException


class ConfigError(ConfigCompositionException, ValueError):
    """A configuration that cannot run; the message says what to change."""


#: ``OSError`` numbers of a failed write that the user can fix (space, permissions, quota).
WRITE_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
)


def explain_write_error(exc: OSError) -> str:
    """``could not write <file>: No space left on device; ...`` with what to do."""
    where = exc.filename or "the output folder"
    advice = {
        errno.ENOSPC: "free disk space, or write elsewhere (hydra.run.dir= / output_dir=)",
        errno.EDQUOT: "the disk quota is used up: free space or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere (hydra.run.dir=)",
        errno.EFBIG: "the file is too large for this file system: write elsewhere",
    }.get(exc.errno or 0, "check the folder's permissions, or write elsewhere (hydra.run.dir=)")
    return (
        f"could not write {where}: {exc.strerror or exc}; {advice}. Finished work is kept "
        "(rerun the same command to resume)"
    )


def exit_on_write_error(program: str, exc: OSError) -> NoReturn:
    """Re-raises ``exc`` unless it is a write the user can fix; else prints one line and exits
    with status 2."""
    if exc.errno not in WRITE_ERRORS:
        raise exc
    print(f"{program}: error: {explain_write_error(exc)}", file=sys.stderr)
    raise SystemExit(2) from None


__all__ = ["WRITE_ERRORS", "ConfigError", "exit_on_write_error", "explain_write_error"]
