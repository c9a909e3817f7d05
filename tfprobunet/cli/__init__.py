"""The `tfprobunet` console script. Thin: every command calls a library function.

- `main.py`: `main()`, the parser, one line per error, exit statuses.
- `flags.py`: value parsers, and library flags whose defaults are read from the library's
  signatures, stored TensorFlow-free in `signatures.json` (each default has one home).
- `training.py` (`train`, `tune`, `compare`, `demo`), `evaluation.py` (`evaluate`,
  `inspect`), `serving.py` (`export`, `serve`, `predict`): one module per command group.

Importable without TensorFlow: `tfprobunet --help` answers at once.
"""

from tfprobunet.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
