"""`main()`: the `tfprobunet` parser, one line per error, and the exit statuses. Each command
group adds its own parsers (`training.py`, `evaluation.py`, `serving.py`)."""

import argparse
import os
import re
import signal
import sys
import warnings

from tfprobunet import _console, _interrupts, catalog
from tfprobunet.cli import data, evaluation, flags, serving, training

PROG = "tfprobunet"
DESCRIPTION = "The `tfprobunet` console script. Thin: every command calls a library function."
# The commands that train, and read the synthetic flips data unless --dataset says otherwise.
FLIPS_BY_DEFAULT = ("train", "tune", "compare")


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too) whose refusals are one line, e.g.
    `tfprobunet train: error: argument --seed: expected an integer >= 0 and <= 2147483647, got
    '-5' (tfprobunet train --help lists the flags)`, instead of the usage (dozens of lines for
    `train`) and then the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} ({self.prog} --help "
                     "lists the flags)\n")


def build_parser(argv=()):
    """The parser of `tfprobunet`; a model of your own named by `--model` in `argv` gets its
    constructor arguments as `train` flags (its class is imported, TensorFlow with it)."""
    parser = OneLineParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true",
                        help="show TensorFlow's start-up and C++ log lines, which are held "
                             f"back otherwise (also: {_console.VERBOSE_VARIABLE}=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    training.add_parsers(commands, models=_own_models(argv))
    evaluation.add_parsers(commands)
    serving.add_parsers(commands)
    data.add_parsers(commands)
    return parser


def main(argv=None):
    """Run `tfprobunet argv` (default: `sys.argv[1:]`); returns 0, or exits with 2 and one line
    on a refusal or an error (the traceback under `--debug`), 128+N on signal N."""
    argv = _negative_values_joined(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return _main(parser, args)
    finally:
        warnings.formatwarning = formatwarning


# A list of numbers whose first is negative, e.g. `-1000,400`, `-.5,1` or `-inf,0` (argparse
# takes it for a flag; no flag holds a comma).
_NEGATIVE_LIST = re.compile(r"-[\d.a-zA-Z][^,\s]*(,[^,\s]*)+")


def _negative_values_joined(argv):
    """`argv` with `--window -1000,400` given as `--window=-1000,400`: argparse reads a value
    that starts with `-` and is not a plain number as a flag of its own."""
    joined = []
    for arg in argv:
        if (joined and joined[-1].startswith("--") and "=" not in joined[-1]
                and _NEGATIVE_LIST.fullmatch(arg)):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def _one_line_warning(message, category, filename, lineno, line=None):
    """A warning as the command prints it: one line of its own, no source path, no code line
    (Python's `warnings.formatwarning`; where warnings are recorded, as by pytest, they stay
    warnings)."""
    return f"{PROG}: warning: {' '.join(str(message).split())}\n"


def _main(parser, args):
    try:
        _check_data_flags(args)
        if args.debug:
            os.environ[_console.VERBOSE_VARIABLE] = "1"
            print("\n".join(_console.hidden), file=sys.stderr)
            _run(args)
        else:
            with _console.filtered_stderr():
                _run(args)
    except _interrupts.TrainingInterrupted as error:  # a step boundary: checkpoints are whole
        parser.exit(128 + error.signum, f"{parser.prog}: {error}\n")
    except KeyboardInterrupt:
        parser.exit(128 + signal.SIGINT, f"{parser.prog}: interrupted (Ctrl-C); nothing that "
                                         "was written is partial: run the command again.\n")
    except Exception as error:  # noqa: BLE001 -- one line for the user; --debug re-raises
        if args.debug:
            raise
        parser.exit(2, f"{parser.prog}: error: {_one_line(error)}\n")
    return 0


def _own_models(argv):
    """The models of your own (not the package's) that `argv` names with `--model NAME`."""
    names = [value for flag, value in zip(argv, argv[1:]) if flag == "--model"]
    names += [arg.partition("=")[2] for arg in argv if arg.startswith("--model=")]
    known = catalog.model_names()
    return [n for n in names if n in known and n not in catalog.BUILTIN_MODELS]


def _run(args):
    """Import the library (the console script parsed its arguments without TensorFlow), then
    run the command."""
    import tfprobunet

    tfprobunet._load()
    args.run(args)


def _one_line(error):
    """An exception as one line: its message, prefixed with its type unless that is a plain
    refusal (`CommandError`, `ValueError`) whose message says it all."""
    message = " ".join(str(error).split()) or "(no message)"
    if isinstance(error, (flags.CommandError, ValueError)):
        return message
    return f"{type(error).__name__}: {message}"


def _check_data_flags(args):
    """Refuse `--data-dir` without `--dataset` where the command would read flips instead, and
    data flags that the chosen dataset would ignore (`evaluate` and `inspect` check again once
    the training run's dataset is known)."""
    if args.command not in (*FLIPS_BY_DEFAULT, "evaluate", "inspect"):  # no data flags
        return
    # (Flags the user did not give are absent where the library holds their defaults.)
    dataset, data_dir, image_size = (getattr(args, name, None)
                                     for name in ("dataset", "data_dir", "image_size"))
    if dataset is None and args.command in FLIPS_BY_DEFAULT and data_dir is not None:
        read = [d for d in catalog.DATASET_NAMES if catalog.DATASETS[d].needs_data_dir]
        raise flags.CommandError(
            f"--data-dir {data_dir} needs --dataset: which layout to read there "
            f"({', '.join(read)}). Without "
            f"--dataset, {args.command} uses the synthetic flips data.")
    if dataset is not None or args.command in FLIPS_BY_DEFAULT:
        evaluation.check_dataset_flags(dataset or "flips", data_dir, image_size)
