"""`Registry`: the latest loadable version of every model under a base path, found by scanning
it (TF Serving's default version policy and `--file_system_poll_wait_seconds`). A version that
fails to load, or whose variables hold NaN or Inf, is logged and skipped while the previous one
keeps serving; clients are told NOT_FOUND and the model's name, never paths or loader errors."""

import gc
import logging
import os
import threading

from tfprobunet.serving.export import version_folders
from tfprobunet.serving.local_server.servable import Servable
from tfprobunet.serving.wire import status_error

logger = logging.getLogger("tfprobunet.serving")


def _fingerprint(path):
    """The names, sizes and modification times of the files a SavedModel loads from (the folder,
    `saved_model.pb`, `variables/*`): a copy that completes, or a fix, changes it. Not a walk of
    the whole tree, which a large folder would make slow at every poll."""
    entries = []
    for folder in (path, os.path.join(path, "variables")):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            try:
                stat = os.stat(os.path.join(folder, name))
            except OSError:  # removed meanwhile
                continue
            entries.append((os.path.relpath(os.path.join(folder, name), path), stat.st_size,
                            stat.st_mtime_ns))
    return tuple(sorted(entries))


class Registry:
    """The latest loadable version of every model under `base_path` (TF Serving's default
    version policy). A version folder counts once it holds `saved_model.pb`; one that fails to
    load is logged, skipped (an older version keeps serving) and tried again only when its
    folder changes."""

    def __init__(self, base_path):
        self.base_path = base_path
        self._servables = {}  # name -> the Servable of its latest version
        self._failed = {}  # path -> the fingerprint of a version that failed to load
        self._lock = threading.Lock()  # guards _servables; held only briefly
        self._reload_lock = threading.Lock()  # one scan at a time

    def _versions_on_disk(self, name):
        """`(version, path)` of the model's complete-looking versions, newest first."""
        folder = os.path.join(self.base_path, name)
        versions = [(v, os.path.join(folder, f)) for v, f in version_folders(folder).items()]
        return sorted(((v, path) for v, path in versions
                       if os.path.exists(os.path.join(path, "saved_model.pb"))), reverse=True)

    def reload(self, wait=True):
        """Load what changed on disk. Never raises: a model whose scan fails is logged and left
        as it was, the others are scanned. Not `wait`ing, return at once if a scan is running."""
        if not self._reload_lock.acquire(blocking=wait):
            return
        try:
            try:
                names = sorted(os.listdir(self.base_path))
            except OSError as e:
                logger.warning("Cannot list the model base path %s: %s", self.base_path, e)
                return
            for name in names:
                try:
                    self._reload_model(name)
                except Exception:  # noqa: BLE001 (one model's trouble must not stop the others)
                    logger.exception("Scanning model %r under %s failed", name, self.base_path)
        finally:
            self._reload_lock.release()

    def _reload_model(self, name):
        with self._lock:
            served = self._servables.get(name)
        removed = served is not None and not os.path.isdir(served.path)
        if removed:  # as TF Serving: unloaded, the newest version left is served instead
            logger.warning("%s was removed: version %d of model %r is no longer served.",
                           served.path, served.version, name)
            served = None
        attempts = []  # the versions it tried to load
        try:
            loaded = self._load_newest(name, served, attempts)
        finally:
            if attempts or removed:
                # A load leaves its graph in reference cycles (a failed one too), which only
                # a full collection frees, and the previous version's session with it.
                gc.collect()
        if removed and loaded is None:
            with self._lock:
                self._servables.pop(name, None)

    def _load_newest(self, name, served, attempts):
        """Serve the newest loadable version newer than `served` (any, if None); returns its
        Servable, or None if there is none. Appends the versions it tries to `attempts`."""
        for version, path in self._versions_on_disk(name):  # newest first
            if served is not None and version <= served.version:
                return None
            fingerprint = _fingerprint(path)
            if self._failed.get(path) == fingerprint:
                continue  # failed before, unchanged since
            attempts.append(version)
            try:
                # Loading takes a while: requests keep being served by the older version.
                servable = Servable(name, version, path)
            except Exception as e:  # noqa: BLE001 (any loader failure: log, skip, go on)
                self._failed[path] = fingerprint
                still = (f"version {served.version} keeps serving" if served is not None
                         else "no version of it is served")
                # The error as text: a log record holding it would keep its traceback's
                # frames, and the graph they hold, alive.
                logger.warning("Could not load %s (version %d of model %r): %s. Skipped, %s; it "
                               "is tried again when its folder changes.", path, version, name,
                               f"{type(e).__name__}: {e}", still)
                continue
            self._failed.pop(path, None)
            with self._lock:
                # The older version stops being served; requests running on it finish.
                self._servables[name] = servable
            return servable
        return None

    def versions(self, name):
        with self._lock:
            servable = self._servables.get(name)
        return [servable.version] if servable is not None else []

    def get(self, name, version=None):
        """The servable, the latest version by default (TF Serving's default policy); NOT_FOUND
        for unknown models and versions."""
        servable = self._find(name, version)
        if servable is None:
            # Exported since the last scan? Requests never queue behind a running scan.
            self.reload(wait=False)
            servable = self._find(name, version)
        if servable is None:
            # The model's name only, as TF Serving answers: which versions failed to load, where
            # and why was logged when they did, for the operator, not the client.
            request = (f"Specific({name}, {version})" if version is not None
                       else f"Latest({name})")
            raise status_error("NOT_FOUND", f"Servable not found for request: {request}")
        return servable

    def _find(self, name, version):
        """The servable of `name` if it is `version` (None: any); version 0 never is."""
        with self._lock:
            servable = self._servables.get(name)
        if servable is None or (version is not None and servable.version != version):
            return None
        return servable

    def close(self):
        with self._lock:
            for servable in self._servables.values():
                servable.close()
            self._servables.clear()
