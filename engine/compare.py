"""Kept so that ``python -m engine.compare`` still works; the command is ``python -m engine.robustness.compare``."""

import sys

from engine.robustness.compare import main

if __name__ == "__main__":
    sys.exit(main())
