"""Streaming scoring of UNet segmentation models on Ray Data."""

__version__ = "0.1.0"
