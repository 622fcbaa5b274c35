"""Opening inputs and outputs safely.

Inputs are opened non-blocking (a FIFO with no writer would otherwise block ``open`` forever),
then fstat'ed: only regular files are read. Outputs are never reached through a symbolic link:
every file storage creates or replaces is opened with ``O_NOFOLLOW`` (and ``O_EXCL`` when it is
new), and paths that will be renamed over are checked with lstat first, so a link planted at
any of them raises UnsafePathError and its target is never written.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import NotARegularFileError, UnreadableFileError, UnsafePathError

# Flags missing on a platform are 0: the open still works, without that protection.
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def kind(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)', ... for an st_mode; 'a regular file' for one."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_input(path: str, what: str = "input") -> int:
    """A read-only descriptor of the regular file ``path`` (following symlinks, as inputs may).

    FileNotFoundError when it does not exist (a dangling symlink says so); NotARegularFileError
    for a directory, FIFO, socket or device; UnreadableFileError for any other failure (symlink
    loop, permission denied, ...). Never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(
                errno.ENOENT,
                f"{what} {path} is a dangling symbolic link (to {os.readlink(path)!r}, which does not exist)",
                path,
            ) from None
        raise
    except OSError as exc:
        try:  # e.g. ENXIO for a socket: report what the path is, when that is the reason
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(f"{what} {path} is {kind(st.st_mode)}, not a regular file") from None
        raise unreadable(path, exc, what) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise unreadable(path, exc, what) from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotARegularFileError(f"{what} {path} is {kind(mode)}, not a regular file")
    return fd


def unreadable(path: str, exc: OSError, what: str = "input") -> UnreadableFileError:
    reason = (
        "a symbolic link loop (too many levels of symbolic links)"
        if exc.errno == errno.ELOOP
        else (exc.strerror or str(exc))
    )
    err = UnreadableFileError(f"cannot open {what} {path}: {reason}")
    err.errno, err.filename = exc.errno, path
    return err


def refuse_link(path: str, what: str, allow_regular: bool = True) -> None:
    """UnsafePathError when ``path`` exists as a symlink or anything but a regular file (or at
    all, with allow_regular=False); nothing when it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and allow_regular:
        return
    target = f" (pointing to {os.readlink(path)!r})" if stat.S_ISLNK(st.st_mode) else ""
    raise UnsafePathError(
        f"{what} {path} is {kind(st.st_mode)}{target}; storage never writes through links "
        f"or into files it did not create: remove it or choose another output path"
    )


def open_output(path: str, flags: int, what: str, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_NOFOLLOW | O_CLOEXEC)`` for a file storage writes; a symlink at
    ``path`` (or anything but a regular file) raises UnsafePathError, the link's target untouched.
    With O_CREAT | O_EXCL an existing path of any kind is refused the same way."""
    try:
        fd = os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.EEXIST, errno.EISDIR, errno.ENXIO):
            refuse_link(path, what, allow_regular=not flags & os.O_EXCL)
            raise UnsafePathError(
                f"{what} {path} already exists ({exc.strerror}); storage only creates it afresh: "
                f"remove it or choose another output path"
            ) from None
        raise
    mode_ = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode_):  # e.g. a FIFO opened O_RDWR
        os.close(fd)
        raise UnsafePathError(
            f"{what} {path} is {kind(mode_)}, not a regular file: remove it or choose another output path"
        )
    return fd


def create_fresh(path: str, what: str, mode: int = 0o644) -> int:
    """A new, empty regular file at ``path`` opened for writing: a leftover regular file of ours
    (a crash left it) is removed first; a symlink or anything else raises UnsafePathError."""
    refuse_link(path, what)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return open_output(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, what, mode)
