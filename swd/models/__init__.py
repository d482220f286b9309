"""Adapters that give samplers and losses one interface over diffusers transformers."""

from swd.models.base import TextCondition
from swd.models.flux import FluxAdapter
from swd.models.sd3 import SD3Adapter

__all__ = ["TextCondition", "SD3Adapter", "FluxAdapter", "adapter_for"]


def adapter_for(transformer, **kwargs):
    """Pick the adapter from the transformer's class name (diffusers model classes)."""
    from swd.errors import SwdError

    name = type(transformer).__name__
    if name == "SD3Transformer2DModel":
        return SD3Adapter(transformer)
    if name == "FluxTransformer2DModel":
        return FluxAdapter(transformer, **kwargs)
    raise SwdError(f"model: no adapter for {name}; supported: SD3Transformer2DModel, FluxTransformer2DModel")
