"""The paper's driver (``reproduce``) with its recipes and table, and the demos."""
