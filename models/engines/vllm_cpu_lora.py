"""A faster LoRA product for vLLM's CPU build, when one adapter serves the whole batch (always, in our engine:
``max_loras=1``). Installed by models/engines/vllm_plugin.py inside vLLM's processes on CPU only; loaded by
vLLM only, so it imports vLLM at the top.

vLLM's CPU LoRA ops (``vllm.lora.ops.torch_ops``, used by ``PunicaWrapperCPU``) support a different adapter
per token by gathering each token's adapter matrices into an (N, out, in) tensor and taking N
matrix-vector products. With one adapter for every token that is the same product as one (N, in) x (in, out)
matmul, without the copy: a 188-token prompt x 32 prompts at rank 128 gathers 6016 copies of every factor
(0.8 GB for a 256-wide one) per module per layer. Measured on this CPU, one such op: 3.5 s gathered, 34 ms
as a matmul; at rank 8, 146 ms and 2 ms (docs/BENCHMARKS.md, "vLLM against transformers").

The three ``bgmv`` ops are replaced by versions that take one matmul when every index names the same
adapter slot and call vLLM's own op otherwise; vLLM's ``sgmv`` (prefill) ops call the ``bgmv`` ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu

_INSTALLED = "_gtr_one_adapter"  # marks a replaced op: vLLM may load plugins more than once per process


def one_slot(indices: torch.Tensor) -> int | None:
    """The adapter slot every token uses when they all use the same one (-1, vLLM's "no adapter", included:
    it indexes the last slot exactly as vLLM's gather does); None when they differ or there are none."""
    if indices.numel() == 0:
        return None
    first = int(indices[0])
    return first if bool((indices == first).all()) else None


def product(inputs: torch.Tensor, weights: torch.Tensor, slot: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, in) inputs times slot ``slot`` of ``weights`` ((slots, out, in) or (slots, 1, out, in)): (N, out)."""
    matrix = weights[slot]
    if matrix.dim() == 3:
        matrix = matrix.squeeze(0)
    return inputs.to(dtype) @ matrix.to(dtype).T


def shrink(original: Callable) -> Callable:
    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        slot = one_slot(lora_indices_tensor)
        if slot is None:
            return original(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        out = product(inputs, lora_a_weights, slot, output_tensor.dtype)
        output_tensor[:, : out.shape[1]] = scaling * out

    return bgmv_shrink


def expand(original: Callable) -> Callable:
    def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
        slot = one_slot(lora_indices_tensor)
        if slot is None:
            return original(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
        out = product(inputs, lora_b_weights, slot, output_tensor.dtype)
        rows = 1 if out.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
        width = min(out.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
        if add_inputs:
            output_tensor[:, :width] += out[:rows, :width]
        else:
            output_tensor[:, :width] = out[:rows, :width]

    return bgmv_expand


def expand_slice(original: Callable) -> Callable:
    def bgmv_expand_slice(
        inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs=True
    ):
        slot = one_slot(lora_indices_tensor)
        if slot is None:
            return original(
                inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs
            )
        out = product(inputs, lora_b_weights, slot, output_tensor.dtype)
        if add_inputs:
            output_tensor[:, slice_offset : slice_offset + slice_size] += out
        else:
            output_tensor[:, slice_offset : slice_offset + slice_size] = out

    return bgmv_expand_slice


def install() -> None:
    """Replace the three ops where vLLM's CPU LoRA path looks them up (once per process)."""
    for name, wrap in (("bgmv_shrink", shrink), ("bgmv_expand", expand), ("bgmv_expand_slice", expand_slice)):
        current = getattr(lora_ops, name)
        if getattr(current, _INSTALLED, False):
            continue
        fast = wrap(current)
        setattr(fast, _INSTALLED, True)
        setattr(lora_ops, name, fast)  # what vLLM's sgmv (prefill) ops call
        setattr(punica_cpu, name, fast)  # what PunicaWrapperCPU imported by name (decode)
