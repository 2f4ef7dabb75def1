"""Kept so that ``python -m engine.reproduce`` still works.

The command is ``python -m engine.reproduction.reproduce``.
"""

import sys

from engine.reproduction.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
