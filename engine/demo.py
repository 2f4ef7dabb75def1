"""Kept so that ``python -m engine.demo`` still works; the command is ``python -m engine.reproduction.demo``."""

import sys

from engine.reproduction.demo import main

if __name__ == "__main__":
    sys.exit(main())
