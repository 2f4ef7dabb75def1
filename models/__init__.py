"""Pose regression models: EfficientNet backbone, single- and multi-scene heads, hypernetworks, registry."""
