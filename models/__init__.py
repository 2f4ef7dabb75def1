"""Pose regression models: backbones, single- and multi-scene heads, hypernetworks, registry."""
