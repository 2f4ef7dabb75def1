"""The robustness report over conditions, and the paired comparison of two sets of runs.

``python -m engine.robustness`` runs the report (``report.main``).
"""
