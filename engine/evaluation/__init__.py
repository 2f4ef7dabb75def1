"""Testing, batch evaluation and its report, result records and caches, and the baselines."""
