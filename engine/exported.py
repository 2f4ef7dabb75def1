"""Kept so that ``python -m engine.exported`` still works; the command is ``python -m engine.deployment.exported``."""

import sys

from engine.deployment.exported import main

if __name__ == "__main__":
    sys.exit(main())
