"""Shared utilities: pose math, metrics, config, checkpoints, device and logging helpers."""
