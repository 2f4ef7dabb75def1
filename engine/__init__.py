"""The jobs behind the entry scripts, one sub-package each.

- ``training``: setting a run up (``train``), the training loop (``trainer``), BatchNorm recalibration and
  the run folder's checkpoint files.
- ``evaluation``: testing (``evaluate``), batch evaluation with its CSV and HTML page, result records and
  caches, and the mean-pose and retrieval baselines.
- ``robustness``: the robustness report over conditions (shifts, styles, corruptions) and the paired
  comparison of two sets of runs.
- ``reproduction``: the paper's driver (``reproduce``) with its recipes and table, and the demos.
- ``deployment``: the Python API (``localize``), the predict mode and ONNX / TorchScript export.

``engine/cli.py`` is the argument parsing shared by the scripts. The modules ``engine/compare.py``,
``demo.py``, ``export.py``, ``exported.py``, ``reproduce.py`` and ``retrieval.py`` only keep the earlier
command paths (``python -m engine.compare`` ...) working.
"""
