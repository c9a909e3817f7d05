"""`Registry`: the latest loadable version of every model under a base path, found by scanning
it (TF Serving's default version policy and `--file_system_poll_wait_seconds`). A version folder
is loaded only once it is complete and settled: TF Serving users copy versions in
non-atomically, and a copy caught halfway is not a broken version. A version that fails to load,
or whose variables hold NaN or Inf, is logged once and skipped while the previous one keeps
serving; clients are told NOT_FOUND and the model's name, never paths or loader errors."""

import gc
import logging
import os
import re
import threading
import time

from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from tfprobunet.serving.export import version_folders
from tfprobunet.serving.local_server.servable import Servable
from tfprobunet.serving.wire import status_error

logger = logging.getLogger("tfprobunet.serving")

# Seconds between the two looks a scan takes at a version folder it finds new or changed: the
# folder is loaded once two looks agree (a copy in progress changes it between them). A copy
# that pauses longer is caught by `_missing`, or, if it stops midway through a file, by the
# loader: the failure is logged and the folder tried again when it changes.
SETTLE_SECONDS = 0.2
_DATA_SHARD = re.compile(r"variables\.data-(\d{5})-of-(\d{5})")


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


def _missing(path):
    """What the SavedModel folder `path` still lacks to be loaded, as a copy in progress leaves
    it, or None: a `saved_model.pb` that parses and, if its graph restores variables (a
    `saver_def`, which every TF2 SavedModel has), `variables/variables.index` and every data
    shard the shards' names count (TF1's loader restores nothing, silently, without the index).
    """
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
    except (OSError, DecodeError):
        return "saved_model.pb that parses"
    if not any(graph.saver_def.filename_tensor_name for graph in saved.meta_graphs):
        return None
    try:
        names = set(os.listdir(os.path.join(path, "variables")))
    except OSError:
        names = set()
    if "variables.index" not in names:
        return "variables/variables.index"
    counts = {int(m[2]) for m in map(_DATA_SHARD.fullmatch, names) if m}
    for count in counts or {1}:
        for shard in range(count):
            name = f"variables.data-{shard:05d}-of-{count:05d}"
            if name not in names:
                return f"variables/{name}"
    return None


class Registry:
    """The latest loadable version of every model under `base_path` (TF Serving's default
    version policy). A version folder counts once it holds `saved_model.pb`, and is loaded once
    it is complete (`variables/variables.index` and every data shard, if it has variables) and
    settled (its fingerprint, `_fingerprint`, the same at two consecutive looks). One that stays
    incomplete, or fails to load, is logged once, skipped (an older version keeps serving) and
    tried again only when its folder changes."""

    def __init__(self, base_path):
        self.base_path = base_path
        self._servables = {}  # name -> the Servable of its latest version
        self._seen = {}  # path -> its fingerprint at the last scan, for the versions looked at
        self._looking = {}  # the same, filled by the scan running
        self._failed = {}  # path -> (fingerprint, why logged) of a version not loaded
        self._lock = threading.Lock()  # guards _servables; held only briefly
        self._reload_lock = threading.Lock()  # one scan at a time

    def _versions_on_disk(self, name):
        """`(version, path)` of the model's complete-looking versions, newest first."""
        folder = os.path.join(self.base_path, name)
        versions = [(v, os.path.join(folder, f)) for v, f in version_folders(folder).items()]
        return sorted(((v, path) for v, path in versions
                       if os.path.exists(os.path.join(path, "saved_model.pb"))), reverse=True)

    def reload(self, wait=True):
        """Load what changed on disk and has settled: a scan, and if it found version folders
        new or changed, a second one `SETTLE_SECONDS` later, which loads those that did not
        change meanwhile. Never raises: a model whose scan fails is logged and left as it was,
        the others are scanned. Not `wait`ing, return at once if a scan is running."""
        if not self._reload_lock.acquire(blocking=wait):
            return
        try:
            if self._scan():
                time.sleep(SETTLE_SECONDS)
                self._scan()
        finally:
            self._reload_lock.release()

    def _scan(self):
        """Look at every model once; returns whether a version folder was new or changed."""
        self._looking = {}
        try:
            names = sorted(os.listdir(self.base_path))
        except OSError as e:
            logger.warning("Cannot list the model base path %s: %s", self.base_path, e)
            names = []
        for name in names:
            try:
                self._reload_model(name)
            except Exception:  # noqa: BLE001 (one model's trouble must not stop the others)
                logger.exception("Scanning model %r under %s failed", name, self.base_path)
        unsettled = any(self._seen.get(p) != f for p, f in self._looking.items())
        self._seen = self._looking
        # Versions no longer looked at (removed, or older than the one served) are forgotten.
        self._failed = {p: v for p, v in self._failed.items() if p in self._seen}
        return unsettled

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
            fingerprint = self._looking[path] = _fingerprint(path)
            if self._seen.get(path) != fingerprint:
                continue  # new or changed since the last look: perhaps a copy in progress
            if self._failed.get(path, (None,))[0] == fingerprint:
                continue  # failed before, unchanged since
            missing = _missing(path)
            if missing is not None:
                self._skip(path, fingerprint, f"{path} (version {version} of model {name!r}) "
                                              f"has no {missing}",
                           "It is not loaded until it is complete")
                continue
            attempts.append(version)
            try:
                # Loading takes a while: requests keep being served by the older version.
                servable = Servable(name, version, path)
            except Exception as e:  # noqa: BLE001 (any loader failure: log, skip, go on)
                still = (f"version {served.version} keeps serving" if served is not None
                         else "no version of it is served")
                # The error as text, on one line: a log record holding it would keep its
                # traceback's frames, and the graph they hold, alive.
                error = " ".join(f"{type(e).__name__}: {e}".split())
                self._skip(path, fingerprint, f"Could not load {path} (version {version} of "
                                              f"model {name!r}): {error}",
                           f"Skipped, {still}; it is tried again when its folder changes")
                continue
            self._failed.pop(path, None)
            self.serve(servable)
            return servable
        return None

    def _skip(self, path, fingerprint, why, then):
        """Remember that the version at `path`, as `fingerprint` says it is, was not loaded, and
        log `why` and `then` as one line, unless `why` was the last thing logged about it: each
        distinct failure is logged once."""
        logged = self._failed.get(path, (None, None))[1]
        self._failed[path] = (fingerprint, why)
        if why != logged:
            logger.warning("%s. %s.", why, then)

    def serve(self, servable):
        """Serve `servable` as the latest version of its model, as a scan does with a version
        it loads; the older one stops being served (requests running on it finish)."""
        with self._lock:
            self._servables[servable.name] = servable

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
