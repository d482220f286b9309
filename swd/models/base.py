"""What every model adapter shares: the text condition and the feature-capture hook.

An adapter wraps a diffusers transformer and speaks the sampler's language: latents
(B, C, H, W) and per-sample noise levels sigma (B,) in, velocity (B, C, H, W) out. It can also
return the image-token hidden states after a chosen block, which the MMD loss and the GAN head
read. Features come from a forward hook on that block; diffusers' forward is never replaced.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from swd.errors import SwdError


@dataclass
class TextCondition:
    """Encoded prompts: token states (B, L, D_joint) and a pooled vector (B, D_pooled).

    time_ids: SDXL's added micro-conditions (B, 6): original size, crop top-left, target size in
    pixels; None lets the adapter derive them from the latent size (only SDXL-style UNets read them).
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor | None = None

    def __post_init__(self):
        if self.prompt_embeds.ndim != 3 or self.pooled.ndim != 2:
            raise SwdError(
                "condition: prompt_embeds must be (B, L, D) and pooled (B, D), got "
                f"{tuple(self.prompt_embeds.shape)} and {tuple(self.pooled.shape)}"
            )
        if self.prompt_embeds.shape[0] != self.pooled.shape[0]:
            raise SwdError("condition: prompt_embeds and pooled have different batch sizes")
        if self.time_ids is not None and (self.time_ids.ndim != 2 or self.time_ids.shape[0] != self.pooled.shape[0]):
            raise SwdError(f"condition: time_ids must be (B, n) with B = {self.pooled.shape[0]}, got {tuple(self.time_ids.shape)}")

    def _map(self, fn) -> "TextCondition":
        time_ids = None if self.time_ids is None else fn(self.time_ids)
        return TextCondition(fn(self.prompt_embeds), fn(self.pooled), time_ids)

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]

    def to(self, *args, **kwargs) -> "TextCondition":
        return self._map(lambda t: t.to(*args, **kwargs))

    def repeat(self, n: int) -> "TextCondition":
        """Each prompt n times in a row: (p0, p0, ..., p1, p1, ...)."""
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def expand_to(self, batch: int) -> "TextCondition":
        """Broadcast a single prompt (batch 1) to `batch` samples; other sizes must already match."""
        if self.batch_size == batch:
            return self
        if self.batch_size == 1:
            return self._map(lambda t: t.expand(batch, *t.shape[1:]))
        raise SwdError(f"condition: batch of {self.batch_size} prompts does not match {batch} latents")

    @staticmethod
    def cat(conds: list["TextCondition"]) -> "TextCondition":
        with_ids = [c.time_ids is not None for c in conds]
        if any(with_ids) and not all(with_ids):
            raise SwdError("condition: cannot batch conditions with and without time_ids")
        time_ids = torch.cat([c.time_ids for c in conds]) if all(with_ids) else None
        return TextCondition(
            torch.cat([c.prompt_embeds for c in conds]), torch.cat([c.pooled for c in conds]), time_ids
        )


class _StopForward(Exception):
    """Raised by the capture hook to skip the blocks after the feature block."""


class FeatureCapture:
    """Keeps the image tokens a block outputs; optionally stops the forward right there.

    diffusers' joint blocks (SD3, FLUX double and single) return (text_states, image_states);
    we keep image_states, shape (B, T_image, C). The hook acts only while armed, so activation
    recomputation under gradient checkpointing (which replays the block) does not re-trigger it.
    """

    def __init__(self):
        self.features: torch.Tensor | None = None
        self._armed = False
        self._stop = False

    def hook(self, module: nn.Module, inputs, output):
        if not self._armed:
            return None
        self.features = output[1] if isinstance(output, tuple) else output
        self._armed = False
        if self._stop:
            raise _StopForward
        return None

    @contextmanager
    def capturing(self, block: nn.Module, stop: bool):
        self.features, self._armed, self._stop = None, True, stop
        handle = block.register_forward_hook(self.hook)
        try:
            yield self
        except _StopForward:
            pass
        finally:
            self._armed = False
            handle.remove()


def sigma_vector(sigma, batch: int, device, dtype=torch.float32) -> torch.Tensor:
    """A float, 0-d or (B,) tensor of noise levels as a (B,) tensor."""
    sigma = torch.as_tensor(sigma, dtype=dtype, device=device)
    if sigma.ndim == 0:
        sigma = sigma.expand(batch)
    if sigma.shape != (batch,):
        raise SwdError(f"sigma: expected a number or shape ({batch},), got {tuple(sigma.shape)}")
    return sigma


def check_block_index(block: int, num_blocks: int) -> int:
    if not isinstance(block, int) or isinstance(block, bool):
        raise SwdError(f"feature_block: expected an int, got {block!r}")
    index = block if block >= 0 else num_blocks + block
    if not 0 <= index < num_blocks:
        raise SwdError(f"feature_block: {block} is out of range for a model with {num_blocks} blocks")
    return index


class Adapter(nn.Module):
    """The base the adapters share: the wrapped diffusers model's config and dtype, the prediction
    call and block features through a forward hook (one forward pass, or stopped at the block).

    The wrapped diffusers model is registered as `self.<network_name>` ("transformer", or "unet"
    for UNets), so the adapter's state-dict keys are the model's with that prefix. A subclass
    provides `_run(x, sigma, cond)`, `block(index)`, `num_blocks`, `patch_size` and
    `max_latent_size` (and `check_latents`, when its latents are not images). `_tokens` turns a block's captured output into
    (B, T, C) tokens (identity for transformers).
    """

    network_name = "transformer"
    patch_name = "patch size"  # what the latent sides must be multiples of, in error messages

    def __init__(self, network: nn.Module, capture: FeatureCapture | None = None):
        super().__init__()
        self.add_module(self.network_name, network)
        self._capture = capture or FeatureCapture()

    @property
    def network(self) -> nn.Module:
        """The wrapped diffusers model."""
        return getattr(self, self.network_name)

    @property
    def config(self):
        return self.network.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        """Channels C of the latents the model takes (FLUX overrides it: its input is packed)."""
        return self.config.in_channels

    def check_latents(self, x: torch.Tensor) -> None:
        """Image latents (B, C, H, W): C the model's channels, sides multiples of the patch size and
        at most `max_latent_size` (None: no limit). Video families override it."""
        if x.ndim != 4 or x.shape[1] != self.latent_channels:
            raise SwdError(f"latents: expected (B, {self.latent_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise SwdError(f"latents: size {h}x{w} is not divisible by the {self.patch_name} {self.patch_size}")
        limit = self.max_latent_size
        if limit is not None and (h > limit or w > limit):
            raise SwdError(f"latents: size {h}x{w} exceeds the model's largest latent side {limit}")

    def _run(self, x, sigma: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        """The family's model call on checked latents, sigma (B,) float32 and a condition of batch B."""
        raise NotImplementedError

    def _predict(self, x, sigma, cond: TextCondition) -> torch.Tensor:
        self.check_latents(x)
        batch = x.shape[0]
        cond = cond.expand_to(batch)
        return self._run(x, sigma_vector(sigma, batch, x.device), cond)

    def forward(self, x: torch.Tensor, sigma, cond: TextCondition) -> torch.Tensor:
        """The model's prediction (a velocity v ~ eps - x0 for flow models), shape of x.

        sigma: a number or (B,); cond: batch B, or 1 (broadcast to the latents' batch)."""
        return self._predict(x, sigma, cond)

    @staticmethod
    def _tokens(features: torch.Tensor) -> torch.Tensor:
        return features

    def velocity_and_features(self, x, sigma, cond: TextCondition, block: int):
        """(prediction, tokens after `block`: (B, T, C)) from one forward pass."""
        with self._capture.capturing(self.block(block), stop=False) as cap:
            v = self._predict(x, sigma, cond)
        return v, self._tokens(cap.features)

    def features(self, x, sigma, cond: TextCondition, block: int) -> torch.Tensor:
        """Tokens after `block`, (B, T, C); the blocks after it are not run."""
        with self._capture.capturing(self.block(block), stop=True) as cap:
            self._predict(x, sigma, cond)
        return self._tokens(cap.features)
