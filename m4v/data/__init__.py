"""Procedural captioned videos: moving shapes, generated on the fly (no download)."""

from m4v.data.shapes import COLOURS, DEFAULT_SPEED, DIRECTIONS, SHAPES, ShapeScene, ShapesVideoDataset

__all__ = ["ShapesVideoDataset", "ShapeScene", "SHAPES", "COLOURS", "DIRECTIONS", "DEFAULT_SPEED"]
