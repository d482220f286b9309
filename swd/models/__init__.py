"""Adapters that give samplers and losses one interface over diffusers transformers and UNets."""

from swd.models.base import TextCondition
from swd.models.flux import FluxAdapter
from swd.models.sd3 import SD3Adapter
from swd.models.unet import UNetAdapter
from swd.models.wan import WanAdapter

__all__ = ["TextCondition", "SD3Adapter", "FluxAdapter", "UNetAdapter", "WanAdapter", "adapter_for", "text_widths"]

ADAPTERS = {
    "SD3Transformer2DModel": SD3Adapter,
    "FluxTransformer2DModel": FluxAdapter,
    "UNet2DConditionModel": UNetAdapter,
    "WanTransformer3DModel": WanAdapter,
}


def adapter_for(transformer, **kwargs):
    """Pick the adapter from the model's class name (diffusers model classes).

    Keyword arguments go to adapters that take them (FLUX: guidance; UNet: prediction, process,
    vae_scale_factor); the others ignore them, so a caller can pass one set for any family.
    """
    from swd.errors import SwdError

    name = type(transformer).__name__
    if name not in ADAPTERS:
        raise SwdError(f"model: no adapter for {name}; supported: {', '.join(ADAPTERS)}")
    if name in ("SD3Transformer2DModel", "WanTransformer3DModel"):
        return ADAPTERS[name](transformer)
    if name == "UNet2DConditionModel":
        unet_keys = ("prediction", "process", "vae_scale_factor")
        return UNetAdapter(transformer, **{k: v for k, v in kwargs.items() if k in unet_keys})
    return FluxAdapter(transformer, **kwargs)


def text_widths(model) -> tuple[int, int | None]:
    """(token-state width, pooled width) of the text conditioning a diffusers model (or its
    adapter, or its config) takes.

    SD3 and FLUX: joint_attention_dim and pooled_projection_dim. Wan: text_dim, no pooled vector. A UNet (cross_attention_dim):
    the pooled width only when it was built to take the pooled vector, else None (unused); SDXL's
    added embedding takes the pooled vector beside 6 time-id embeddings of addition_time_embed_dim.
    """
    config = getattr(model, "config", model)
    if "text_dim" in config:
        return config["text_dim"], None
    if "joint_attention_dim" in config:
        return config["joint_attention_dim"], config["pooled_projection_dim"]
    if config.get("addition_embed_type") == "text_time":
        from swd.models.unet import TIME_IDS

        pooled = config["projection_class_embeddings_input_dim"] - TIME_IDS * config["addition_time_embed_dim"]
        return config["cross_attention_dim"], pooled
    pooled = config.get("projection_class_embeddings_input_dim") if config.get("class_embed_type") == "projection" else None
    return config["cross_attention_dim"], pooled
