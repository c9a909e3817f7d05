"""`python -m tfprobunet.cli`."""

import sys

from tfprobunet.cli.main import main

sys.exit(main())
