"""The one home of a run's file layout, used by `train`, `compare`, `tune` and the CLI: its
paths (`CONFIG`, `MODEL`, `LOG`, `BACKUP`) and their kinds (`check_files`), its settings
record (`read_settings`, `write_settings`, `effective`), what it can resume from
(`resume_points`) and the rules of a finished run (`finished_model_path`).

A workdir holds:
- `train_config.json`: the settings and, once a run is finished, `finished_epochs`;
- `log.csv`: one row per epoch;
- `backup/`: the epoch checkpoints (`callbacks.EpochCheckpoint`), deleted once finished;
- `model.keras`: the trained model;
- `.tfprobunet.lock`: held by the process training in it (`_io.exclusive`).
"""

import inspect
import json
import os
import shutil
import tempfile

from tfprobunet import _io
from tfprobunet import models as models_lib

WorkdirError = _io.WorkdirError


# Settings a resumed or continued run may change: more epochs, other devices, data moved elsewhere.
RESUMABLE_CHANGES = ("epochs", "strategy", "data_dir")
# The files of a run.
CONFIG = "train_config.json"  # the settings; `finished_epochs` once finished
MODEL = "model.keras"  # the trained model, optimizer state included
LOG = "log.csv"  # a row per epoch
BACKUP = "backup"  # the epoch checkpoints, until the run finishes


def read_settings(workdir):
    """The settings recorded in `workdir` (its `train_config.json`), `None` if there are none.
    Raises `WorkdirError` if the file is unreadable."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as error:
        saved = error
    if saved is None or isinstance(saved, dict):
        return saved
    problem = (f"{type(saved).__name__}: {saved}" if isinstance(saved, Exception)
               else f"it holds a {type(saved).__name__}, not a JSON object")
    raise WorkdirError(
        f"{path} is unreadable ({problem}). `train` writes it whole or not at all, so it was "
        "changed from outside. It holds the run's settings (and, for a finished run, its epoch "
        "count): put back a good copy, or use a new workdir.")


def model_arguments(model="probunet"):
    """The arguments of the model named `model` (see `tfprobunet.models.MODELS`) that `train`
    forwards, with their defaults."""
    skip = ("self", "num_classes", "seed", "kwargs")
    return {name: p.default for name, p in
            inspect.signature(models_lib.get(model).__init__).parameters.items()
            if name not in skip and p.default is not p.empty}


def check_model_kwargs(model, model_kwargs):
    """Refuse arguments the model named `model` does not take, naming those it does."""
    known = {"num_classes", *model_arguments(model)}
    unknown = sorted(set(model_kwargs) - known)
    if unknown:
        raise ValueError(f"{models_lib.get(model).__name__} (model={model!r}) takes no "
                         f"argument {', '.join(map(repr, unknown))}; its arguments are "
                         f"{', '.join(sorted(known))}.")


# `train` arguments that are not settings of the run (not recorded in train_config.json).
UNRECORDED = ("workdir", "max_minutes", "jit_compile", "verbose", "callbacks", "validation_data",
              "connect_timeout", "model_kwargs")


def effective(settings, defaults):
    """`settings` with every default filled in, as JSON has them: `beta=1.0` given or left out
    is the same run. `defaults`: the recorded `train` arguments' defaults (settings added in
    later versions, such as `schedule`, read as their defaults in the records of earlier
    ones), to which the model's own argument defaults are added."""
    model = settings.get("model", defaults["model"])
    return json.loads(json.dumps({**defaults, **model_arguments(model), **settings},
                                 default=list))


def write_settings(workdir, settings):
    """Record `settings` in `workdir`, whole or not at all; NaN is refused, never written."""
    _io.write_json(os.path.join(workdir, CONFIG), settings)


def setting_differences(before, now, ignore=()):
    """The settings that differ between the dicts `before` and `now` (but those in `ignore`),
    as `"key: old before, new now, ..."`; empty if none do."""
    changed = sorted(k for k in set(before) | set(now)
                     if k not in ignore and before.get(k) != now.get(k))
    return ", ".join(f"{k}: {before.get(k)!r} before, {now.get(k)!r} now" for k in changed)


def _check_settings(workdir, saved, settings):
    """Refuse to continue a run made with other settings (other than `RESUMABLE_CHANGES`)."""
    differences = setting_differences(saved, settings,
                                      ignore=(*RESUMABLE_CHANGES, "finished_epochs"))
    if differences:
        raise WorkdirError(f"{workdir} holds a run with other settings ({differences}). "
                           f"Continue it with the same arguments (only "
                           f"{', '.join(RESUMABLE_CHANGES)} may change), or use a new workdir "
                           "to start a new run.")


def resume_points(workdir, checkpoint, saved, settings):
    """What a run in `workdir` can continue from, newest first, as `(epochs, path, problem)`
    (see `EpochCheckpoint.checkpoints`): the checkpoints newer than the finished model, then
    `model.keras`. `saved` (None for a new run) and `settings` are effective settings (see
    `effective`), the recorded ones and those asked for; call `check_files` first. Raises
    `WorkdirError` when the run has other settings, when `epochs` leaves nothing to train, or
    when `model.keras` holds an unknown number of epochs."""
    model_path = os.path.join(workdir, MODEL)
    finished = (saved or {}).get("finished_epochs")
    if finished is not None and not os.path.exists(model_path):
        raise WorkdirError(
            f"{workdir} holds a finished run of {finished} epochs, but its {model_path} is "
            "missing: put it back to continue training it, or use a new workdir to start a new "
            "run (this one is not trained again from scratch).")
    points = checkpoint.checkpoints()
    if points and saved is None:
        raise WorkdirError(
            f"{checkpoint.directory} holds checkpoints but {os.path.join(workdir, CONFIG)} is "
            "missing, so the settings they were made with are unknown: put it back to resume, "
            f"or delete {checkpoint.directory} to start the run again from epoch 1.")
    if finished is not None:
        # Checkpoints no newer than the finished model are what a kill during the end of that
        # run left behind (model.keras holds their state): finish its clean-up.
        stale = [c for c in points if c[0] is not None and c[0] <= finished]
        for _, path, _ in stale:
            checkpoint.remove(path)
        points = [c for c in points if c not in stale]
        if not points:
            shutil.rmtree(checkpoint.directory, ignore_errors=True)
    if os.path.exists(model_path):
        if finished is not None:
            points.append((finished, model_path, None))
        elif not points:
            raise WorkdirError(
                f"{model_path} exists but {CONFIG} does not say how many epochs it was trained "
                f"for (a run of an earlier tfprobunet?); `train` does not overwrite it. Move it "
                f"away to start a new run in {workdir}, or use a new workdir.")
    if saved is not None and points:
        _check_settings(workdir, saved, settings)
    epochs = settings["epochs"]
    newest = max((c[0] for c in points if c[0] is not None), default=None)
    if finished is not None and newest == finished and epochs <= finished:
        raise WorkdirError(
            f"{workdir} holds a finished run of {finished} epochs ({model_path}); "
            f"epochs={epochs} leaves nothing to train. Pass epochs > {finished} to continue "
            "training it (log.csv gets the new epochs), load it with keras.models.load_model, "
            "or use a new workdir to start a new run.")
    if newest is not None and epochs < newest:
        raise WorkdirError(
            f"{workdir} holds a run checkpointed after epoch {newest} ({checkpoint.directory}); "
            f"epochs={epochs} is fewer. Pass epochs >= {newest} to finish it, or use a new "
            "workdir to start a new run.")
    return points


# What each of a run's files holds, and its kind.
FILES = {CONFIG: ("the run's settings", "file"), LOG: ("a row per epoch", "file"),
         MODEL: ("the trained model", "file"), BACKUP: ("the epoch checkpoints", "folder")}


def check_files(workdir):
    """Refuse, before anything is read or changed, a run whose files (`FILES`, and the
    checkpoints in `backup/`) are symbolic links (they could lead outside the workdir) or of the
    wrong kind (`backup` a file, `log.csv` a folder): one `WorkdirError` naming the path."""
    for name, (holds, kind) in FILES.items():
        path = os.path.join(workdir, name)
        _io.refuse_link(path, f"Put the {kind} itself in its place ({holds}), or use a new "
                              "workdir.")
        if os.path.exists(path) and os.path.isdir(path) != (kind == "folder"):
            actual = "folder" if os.path.isdir(path) else "file"
            raise WorkdirError(f"{path} is a {actual}, not a {kind}: `train` keeps {holds} "
                               "there. Move it away, or use a new workdir.")
    backup = os.path.join(workdir, BACKUP)
    for name in os.listdir(backup) if os.path.isdir(backup) else ():
        _io.refuse_link(os.path.join(backup, name),
                        f"Put the checkpoint itself in its place, or delete {backup} to start "
                        "the run again from epoch 1.")


def make_workdir(workdir):
    """Create `workdir` if needed, or say in one sentence why it cannot be written."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"The workdir {workdir} is not a folder (it is a file): pass a "
                           "folder, new or holding a run of `train`.")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = tempfile.TemporaryFile(dir=workdir)
    except OSError as error:
        raise WorkdirError(f"The workdir {workdir} cannot be written ({error.strerror}): pass "
                           "a folder you can write to.") from None
    probe.close()


def finished_model_path(workdir, epochs=None):
    """The path of the run's `model.keras` if `workdir` holds a finished run (of `epochs`
    epochs, if given), else None."""
    model_path = os.path.join(workdir, MODEL)
    settings = read_settings(workdir)
    if settings is None or not os.path.exists(model_path):
        return None
    finished = settings.get("finished_epochs")
    if finished is None or (epochs is not None and finished != epochs):
        return None
    return model_path
