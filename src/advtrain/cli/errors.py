"""One-line messages for failures outside advtrain's control (a full disk, a read-only folder)."""

from __future__ import annotations

import errno

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


__all__ = ["WRITE_ERRORS", "explain_write_error"]
