"""Models: the registry of Mask R-CNN variants streamseg can run, and the small shipped architecture."""

from .registry import ModelInfo, available, get_entry, load_model, model_info

__all__ = ["ModelInfo", "available", "get_entry", "load_model", "model_info"]
