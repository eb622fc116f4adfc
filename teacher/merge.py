"""Merging a buffer of LoRA checkpoints into one weight update per module, streamed.

Module by module (and in blocks of rows): for each LoRA'd module the k checkpoints' updates
``dW_i = scaling * B_i @ A_i`` are rebuilt for a block of rows, merged with TIES (using each
update's whole-tensor trim threshold, computed once when the checkpoint arrived) or linearly, and
handed on. Peak memory is one module's merged update plus a few cache-sized blocks, never the k
stacked updates (a Qwen2.5-VL-3B checkpoint at r=128 is about 240 M LoRA parameters).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch

from core.ties import elect_and_mean, trim_threshold
from models.lora import FACTORS, factor_keys, iter_lora_deltas

# Large merges run in blocks of about this many entries (1 MB of fp32 per buffer), so the per-entry
# work of TIES stays near the cache instead of streaming k full-size temporaries through memory.
CHUNK_ELEMENTS = 1 << 18


def trim_thresholds(
    adapter: dict[str, torch.Tensor], scaling: float, density: float, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Each module's TIES trim threshold for one checkpoint (its full dW, one module at a time, on ``device``)."""
    return {module: trim_threshold(delta, density) for module, delta in iter_lora_deltas(adapter, scaling, device)}


def merge_module(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    weights: torch.Tensor,
    scaling: float,
    method: str,
    thresholds: Sequence[float] | None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """The merged update (out, in) of one module from k (A (r, in), B (out, r)) factor pairs, on
    the factors' device.

    Streams over checkpoints, one cache-sized block of rows at a time. TIES needs no stack of the k
    trimmed updates: with P = sum_i w_i relu(t_i), N = sum_i w_i relu(-t_i) and the weight sums
    Dp, Dn of the positive and negative entries, the elected sign is sign(P - N) and the disjoint
    mean is P / Dp (sign +), -N / Dn (sign -) or 0 (``core.ties.elect_and_mean``, which the reference
    shares). Tests check this against core.ties.ties_merge.
    """
    if method not in ("ties", "linear"):
        raise ValueError(f"unknown merge method {method!r}; choose ties or linear")
    out_features, in_features = pairs[0][1].shape[0], pairs[0][0].shape[1]
    device = pairs[0][0].device
    on_cpu = device.type == "cpu"
    if not on_cpu:  # a GPU streams memory, not cache: one block per module, a few of its size in all
        chunk_elements = max(chunk_elements, out_features * in_features)
    rows_per_chunk = max(1, chunk_elements // in_features)
    w = [float(x) for x in weights]
    total = len(pairs) * out_features * in_features
    if method == "ties" and total < COMPILE_MIN_ELEMENTS:
        return _ties_dense(pairs, w, scaling, thresholds)  # small: a few vectorised ops beat a loop
    accumulate = (_accumulator(total) if on_cpu else _accumulate) if method == "ties" else None
    merged = torch.empty(out_features, in_features, device=device)
    for start in range(0, out_features, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, out_features))
        if method == "linear":
            block = merged[rows].zero_()
            for (a, b), wi in zip(pairs, w, strict=True):
                block.addmm_(b[rows], a, alpha=scaling * wi / sum(w))
        else:
            merged[rows] = _ties_block(pairs, w, scaling, thresholds, rows, accumulate)
    return merged


def _ties_block(
    pairs, w: list[float], scaling: float, thresholds: Sequence[float], rows: slice, accumulate
) -> torch.Tensor:
    shape = (pairs[0][1][rows].shape[0], pairs[0][0].shape[1])
    device = pairs[0][0].device
    sums = [torch.zeros(shape, device=device) for _ in range(4)]  # positive sum, negative sum, their weights
    update = torch.empty(shape, device=device)
    for (a, b), wi, threshold in zip(pairs, w, thresholds, strict=True):
        torch.matmul(b[rows], a, out=update)
        accumulate(update, threshold / scaling, wi, *sums)  # compare |B @ A| with threshold / scaling
    return elect_and_mean(*sums).mul_(scaling)


def _ties_dense(pairs, w: list[float], scaling: float, thresholds: Sequence[float]) -> torch.Tensor:
    """The same sums over the whole (k, out, in) stack at once, for small modules."""
    stack = torch.stack([b @ a for a, b in pairs]).mul_(scaling)
    k = len(pairs)
    column = {"device": stack.device, "dtype": stack.dtype}
    kept = (stack.abs() >= torch.tensor(thresholds, **column).view(k, 1, 1)).to(stack.dtype)
    kept = kept * torch.tensor(w, **column).view(k, 1, 1)
    positive = (stack > 0).to(stack.dtype) * kept
    negative = kept - positive
    magnitude = stack.abs_()
    pos_sum, neg_sum = (magnitude * positive).sum(0), (magnitude * negative).sum(0)
    return elect_and_mean(pos_sum, neg_sum, positive.sum(0), negative.sum(0))


def _accumulate(update, threshold, wi, pos_sum, neg_sum, pos_weight, neg_weight) -> None:
    """Add one checkpoint's trimmed block to the four TIES sums (in place)."""
    magnitude = update.abs()
    kept = (magnitude >= threshold).to(update.dtype) * wi
    positive = (update > 0).to(update.dtype) * kept
    negative = kept - positive
    pos_sum += magnitude * positive
    neg_sum += magnitude * negative
    pos_weight += positive
    neg_weight += negative


_compiled = None
COMPILE_MIN_ELEMENTS = 1 << 20  # merges this large (k x out x in entries) run the fused, compiled step


def _accumulator(total_elements: int):
    """The per-checkpoint step: eager, or fused by torch.compile for big merges (about 6x faster on
    CPU; the first call compiles for ~15 s, and a machine without a C++ compiler falls back)."""
    global _compiled
    if total_elements < COMPILE_MIN_ELEMENTS or _compiled is False:
        return _accumulate
    if _compiled is None:
        try:
            candidate = torch.compile(_accumulate, dynamic=True)
            probe = [torch.zeros(2, 3) for _ in range(5)]
            candidate(probe[0], 0.5, 1.0, *probe[1:])
            _compiled = candidate
        except Exception as error:  # no compiler toolchain, unsupported platform: stay eager
            warnings.warn(f"torch.compile unavailable for the TIES merge ({error}); using the eager step", stacklevel=2)
            _compiled = False
            return _accumulate
    return _compiled


def merge_stream(
    handles: Sequence,
    modules: Sequence[str],
    weights: torch.Tensor,
    scaling: float,
    method: str,
    thresholds: Sequence[dict[str, float]] | None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """(module, merged dW) for every module, reading each checkpoint's factors from open handles and
    merging on ``device`` (the teacher's: on a GPU a 3B merge is seconds, on CPU minutes). Every
    checkpoint of a buffer has the same keys: they are grouped by module once."""
    keys = factor_keys(handles[0].keys())
    for module in modules:
        pairs = [tuple(h.get_tensor(keys[module][p]).to(device, torch.float32) for p in FACTORS) for h in handles]
        module_thresholds = [t[module] for t in thresholds] if thresholds is not None else None
        yield module, merge_module(pairs, weights, scaling, method, module_thresholds)
