"""``python -m engine.robustness``: the robustness report (see :mod:`engine.robustness.report`)."""

from engine.robustness.report import main

raise SystemExit(main())
