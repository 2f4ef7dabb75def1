"""Kept so that ``python -m engine.export`` still works; the command is ``python -m engine.deployment.export``."""

import sys

from engine.deployment.export import main

if __name__ == "__main__":
    sys.exit(main())
