"""Training, testing and batch evaluation, shared by the entry scripts."""
