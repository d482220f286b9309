"""Adapters that give samplers and losses one interface over diffusers transformers and UNets."""

from swd.models.base import TextCondition
from swd.models.flux import FluxAdapter
from swd.models.sd3 import SD3Adapter
from swd.models.unet import UNetAdapter

__all__ = ["TextCondition", "SD3Adapter", "FluxAdapter", "UNetAdapter", "adapter_for"]

ADAPTERS = {
    "SD3Transformer2DModel": SD3Adapter,
    "FluxTransformer2DModel": FluxAdapter,
    "UNet2DConditionModel": UNetAdapter,
}


def adapter_for(transformer, **kwargs):
    """Pick the adapter from the model's class name (diffusers model classes).

    Keyword arguments go to adapters that take them (FLUX: guidance; UNet: prediction); the
    others ignore them, so a caller can pass one set for any family.
    """
    from swd.errors import SwdError

    name = type(transformer).__name__
    if name not in ADAPTERS:
        raise SwdError(f"model: no adapter for {name}; supported: {', '.join(ADAPTERS)}")
    if name == "SD3Transformer2DModel":
        return SD3Adapter(transformer)
    if name == "UNet2DConditionModel":
        return UNetAdapter(transformer, **{k: v for k, v in kwargs.items() if k == "prediction"})
    return FluxAdapter(transformer, **kwargs)
