"""Kept so that ``python -m engine.retrieval`` still works; the command is ``python -m engine.evaluation.retrieval``."""

import sys

from engine.evaluation.retrieval import main

if __name__ == "__main__":
    sys.exit(main())
