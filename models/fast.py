"""Small exact speed-ups applied to every loaded model (learner, engines and teacher alike).

The vision patch embedding is a Conv3d whose stride equals its kernel over inputs already cut into
patches: it is a plain matrix product over the flattened patch, which CPU conv3d kernels run about
ten times slower; and a still image is one frame repeated ``temporal_patch_size`` times, so summing
the weight over time halves the product again. Same weights, same parameters, same state-dict keys.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _patch_embed_as_linear(self, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.proj.weight  # (embed_dim, C, T, P, P)
    embed_dim, channels, frames = weight.shape[:3]
    patches = hidden_states.reshape(-1, channels, frames, weight[0, 0, 0].numel()).to(weight.dtype)
    if frames > 1 and all(torch.equal(patches[:, :, 0], patches[:, :, t]) for t in range(1, frames)):
        # A still image is its one frame repeated: W . [x; x] = (W_0 + W_1) . x, half the work.
        return F.linear(patches[:, :, 0].reshape(patches.shape[0], -1), weight.sum(2).reshape(embed_dim, -1))
    return F.linear(patches.reshape(patches.shape[0], -1), weight.reshape(embed_dim, -1))


def speed_up(model: torch.nn.Module) -> torch.nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    patch_embed = getattr(getattr(inner.model, "visual", None), "patch_embed", None)
    if patch_embed is not None and isinstance(getattr(patch_embed, "proj", None), torch.nn.Conv3d):
        patch_embed.forward = types.MethodType(_patch_embed_as_linear, patch_embed)
    return model
