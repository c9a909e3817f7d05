"""How the library writes its files, the one home of atomic writes and file locks: whole or not
at all (`replacing`, `write_json`), after checking that the disk has room (`ensure_space`), one
writer at a time (`locked`), one run per folder at a time (`exclusive`), temporary folders that a
killed writer left removed by the next (`claimed`, `remove_unclaimed`), never through a symbolic
link (`refuse_link`), with checksums of what must come back unchanged (`sha256`). Used by training,
the serving export, `compare` and `tune`. Imports nothing heavy."""

import contextlib
import errno
import json
import os
import shutil
import socket
import uuid

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; `exclusive` then guards nothing
    fcntl = None

LOCK_NAME = ".tfprobunet.lock"


class WorkdirError(ValueError):
    """The work directory holds a run that `train` cannot continue as asked (other settings,
    nothing left to train, no readable checkpoint, another run using it). The message says what
    to do."""


class WorkdirBusyError(WorkdirError):
    """Another process holds the work directory (see `exclusive`)."""


def _fsync_directory(directory):
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make a rename in `directory` durable
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path beside `path` to write the new file to; then put it on disk and
    rename it over `path`. A kill (or a power cut) at any moment leaves the old `path` or the
    new one, never a partial file; a write that fails (a full disk) removes the temporary file
    and leaves the old `path`.

    The temporary name, `.<pid>-<random>.<name>`, is unique to the call (two writers of one path
    never share it) and keeps `path`'s extension (Keras picks the format from it)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{os.getpid()}-{uuid.uuid4().hex[:8]}.{name}")
    try:
        yield tmp
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def write_json(path, value, allow_nan=False):
    """Write `value` to `path` as indented JSON, whole or not at all (`replacing`). NaN and
    infinities are refused (`ValueError`) unless `allow_nan`: JSON has none, and a file holding
    them is unreadable to strict JSON readers (reports of degenerate data may hold them)."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=2, allow_nan=allow_nan)


def is_temporary(name, of=None):
    """Whether the file name `name` is a temporary name of `replacing` (of a file named `of`,
    if given)."""
    if not name.startswith("."):
        return False
    prefix, _, rest = name[1:].partition(".")
    pid, _, token = prefix.partition("-")
    return pid.isdigit() and len(token) == 8 and bool(rest) and (of is None or rest == of)


def ensure_space(directory, needed, what):
    """Raise `OSError(ENOSPC)` naming `directory`, the bytes `needed` and the bytes free when
    the disk holding `directory` has less room than `needed` (plus a 5 % margin): checked
    before writes whose libraries handle a full disk badly (h5py prints hundreds of lines, then
    may crash the process)."""
    free = shutil.disk_usage(directory).free
    if free < needed * 1.05:
        raise OSError(errno.ENOSPC,
                      f"Not enough disk space to write {what} in {directory}: it needs about "
                      f"{_megabytes(needed)}, {_megabytes(free)} are free. Free some space (or "
                      "use a workdir on another disk) and run the same command again: it "
                      "continues from the last checkpoint", directory)


def _megabytes(count):
    return f"{count / 2**20:.1f} MiB"


def _link_error(path, fix):
    return WorkdirError(f"{path} is a symbolic link (to {os.path.realpath(path)}): the library "
                        f"writes there, and never outside the folder it was given. {fix}")


def refuse_link(path, fix="Put the file itself in its place (or remove the link)."):
    """Raise `WorkdirError` naming `path` and its target if `path` is a symbolic link: a file
    the library writes (or reads to write again) is never reached through one, which could lead
    outside the folder it was given. `fix` says what to do instead."""
    if os.path.islink(path):
        raise _link_error(path, fix)


def refuse_links(directory, names, fix="Remove the link: the library writes its own files "
                                        "there."):
    """`refuse_link` for each of `names` in `directory` and, for a folder among them,
    everything under it: what a command writes there (a tuner's project, a comparison's runs)
    is checked before it starts."""
    for name in names:
        top = os.path.join(directory, name)
        refuse_link(top, fix)
        for root, folders, files in os.walk(top):  # links are listed, never entered
            for entry in folders + files:
                refuse_link(os.path.join(root, entry), fix)


def sha256(path):
    """The SHA-256 of the bytes of the file `path`, as hexadecimal (`sha256sum`'s)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)


@contextlib.contextmanager
def locked(path, blocking=True):
    """Hold an exclusive lock on the file `path` (created if missing) within the block; other
    processes and threads wait for it (or, not `blocking`, the block gets False at once; else
    True). The system releases it if the process dies. A symbolic link is not followed (ELOOP):
    it could lead outside the folder it is in. Without `fcntl` (Windows), nothing is locked
    and the block gets True."""
    if fcntl is None:
        yield True
        return
    with open(path, "a", opener=_no_follow) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


LOCK_SUFFIX = ".lock"


@contextlib.contextmanager
def claimed(path):
    """Mark the temporary folder `path` as being written while the block runs: its lock file
    (`path` + `.lock`, created first: create `path` inside the block) is held, and released by
    the system if the writer dies, so that `remove_unclaimed` can tell what a killed writer
    left from what a live one is writing."""
    lock = path + LOCK_SUFFIX
    with locked(lock):
        try:
            yield
        finally:
            os.remove(lock)


def remove_unclaimed(directory, prefix):
    """Remove the folders `directory/<prefix>*` (and their lock files) whose lock no process
    holds (`claimed`): what killed writers left. A folder a live writer holds, in this process
    or another, is kept, and so are symbolic links (no writer makes one, and they could lead
    outside `directory`).

    Returns:
        The removed folders' paths.
    """
    entries = os.listdir(directory) if os.path.isdir(directory) else []
    # Each writer's folder and its lock file; either may be left alone by a kill (the lock
    # file alone when killed between the folder's move or removal and the unlock).
    stems = {entry[:-len(LOCK_SUFFIX)] if entry.endswith(LOCK_SUFFIX) else entry
             for entry in entries if entry.startswith(prefix)}
    removed = []
    for stem in sorted(stems):
        path = os.path.join(directory, stem)
        if os.path.islink(path) or os.path.islink(path + LOCK_SUFFIX):
            continue
        with locked(path + LOCK_SUFFIX, blocking=False) as stale:
            if stale:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                os.remove(path + LOCK_SUFFIX)
    return removed


@contextlib.contextmanager
def exclusive(directory, purpose):
    """Hold `directory` for this process while the block runs: a second `exclusive` on it, from
    any process, raises `WorkdirBusyError` naming the holder's pid and host. The lock (an
    advisory `flock` on `directory/.tfprobunet.lock`) is released when the block ends, and by
    the system if the process dies, however it dies. Without `fcntl` (Windows), nothing is
    locked.

    Args:
        directory: an existing folder.
        purpose: what holds it, for the message (e.g. `"train"`).
    """
    if fcntl is None:
        yield
        return
    path = os.path.join(directory, LOCK_NAME)
    try:  # never through a symbolic link: the lock is written to, outside the workdir else
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise _link_error(path, "Remove the link (the run makes its own lock file).") from None
    with os.fdopen(descriptor, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "an unknown process"
            raise WorkdirBusyError(
                f"{directory} is in use by another {purpose} ({holder}): two runs in one "
                "workdir would mix their checkpoints and logs. Wait for it to end (or stop "
                "it), or use another workdir.") from None
        try:
            me = f"pid {os.getpid()} on {socket.gethostname()}"
            f.seek(0)
            if f.read() != me:  # written only when it changes: a resumed run leaves it as it is
                f.seek(0)
                f.truncate()
                f.write(me)
                f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
