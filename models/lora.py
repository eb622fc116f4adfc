"""LoRA on the language model only, and adapter state dicts that travel between processes.

Targets are chosen by regex on module paths: the vision blocks also have ``gate_proj/up_proj/
down_proj``, and the learner, the rollout engines (vLLM included) and the teacher must all apply
the very same function, so the vision tower is never adapted (DESIGN.md section 5).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

LANGUAGE_MODEL_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 128  # DESIGN.md section 2: r=128, alpha=256, dropout 0.05
    alpha: int = 256
    dropout: float = 0.05

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def add_lora(model, settings: LoraSettings) -> PeftModel:
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=LANGUAGE_MODEL_TARGETS,
        bias="none",
    )
    return get_peft_model(model, config)


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The LoRA weights (CPU copies), keyed the way ``load_adapter_state`` expects."""
    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Load LoRA weights in place; every adapter weight must be present (a partial load is an error)."""
    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"adapter does not fit this model: {len(missing)} missing (e.g. {sorted(missing)[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]}); same base model and LoRA rank?"
        )
    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"adapter keys not used by the model: {result.unexpected_keys[:3]}")


FACTORS = ("lora_A", "lora_B")


def factor_keys(adapter_keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each LoRA'd module's factor keys, ``{module path: {"lora_A": key, "lora_B": key}}``, with the
    plain (un-wrapped) model's module paths; a malformed adapter may lack one factor of a module."""
    out: dict[str, dict[str, str]] = {}
    for key in adapter_keys:
        for part in FACTORS:
            marker = f".{part}."
            if marker in key:
                out.setdefault(key.split(marker)[0].removeprefix("base_model.model."), {})[part] = key
    return out


def adapter_modules(adapter_keys: Iterable[str]) -> list[str]:
    """Module paths (plain-model names) of an adapter's LoRA factors, sorted."""
    return sorted(m for m, parts in factor_keys(adapter_keys).items() if "lora_A" in parts)


def lora_deltas(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The full weight update of each LoRA'd module, ``dW = scaling * B @ A``, keyed by module path.

    Module paths are those of the plain (un-wrapped) model, e.g.
    ``model.language_model.layers.0.self_attn.q_proj``. This, never the A and B factors one by one,
    is what the engines add to base weights and what the teacher's TIES merge works on.
    """
    return dict(iter_lora_deltas(state, scaling))


def iter_lora_deltas(
    state: dict[str, torch.Tensor], scaling: float, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """``lora_deltas`` one module at a time, computed on ``device``: at Qwen2.5-VL-3B size all the
    updates together are 11 GB of fp32, one module's at most 90 MB."""
    keys = factor_keys(state)
    for module, parts in keys.items():  # every module checked before the first is yielded (and applied)
        if set(parts) != set(FACTORS):
            raise ValueError(f"adapter has only {sorted(parts)} for {module}")
    for module, parts in keys.items():
        a, b = (state[parts[p]].to(device, torch.float32) for p in FACTORS)
        yield module, scaling * (b @ a)


class MergedWeights:
    """Keeps pristine copies of the LoRA'd modules' base weights and sets ``W = W0 + dW`` in place.

    Re-merging from the pristine copy (never ``W -= dW`` then ``W += dW'``) keeps fp32 round-off from
    accumulating over hundreds of adapter versions. Generation then runs plain linear layers, with no
    LoRA branch to pay for at every token.
    """

    def __init__(self, model: torch.nn.Module, modules: list[str]):
        self.model = model
        self.base = {name: model.get_submodule(name).weight.detach().clone() for name in modules}

    def check(self, modules: Iterable[str]) -> None:
        """Raise, naming one, when some of ``modules`` are not modules this model adapts."""
        unknown = set(modules) - set(self.base)
        if unknown:
            raise ValueError(f"adapter targets modules this model does not adapt: {sorted(unknown)[:3]}")

    @torch.no_grad()
    def apply(self, deltas: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        """Set every adapted module to ``W0 + dW`` (``W0`` where ``deltas`` has no entry).

        ``deltas`` is a dict, checked before anything changes, or (module, dW) pairs consumed one at a
        time (``iter_lora_deltas``: a large model's updates never all exist at once), which the caller
        checks first with ``check``.
        """
        if isinstance(deltas, Mapping):
            self.check(deltas)
            deltas = deltas.items()
        seen = set()
        for name, delta in deltas:
            self.check([name])
            self.apply_module(name, delta)
            seen.add(name)
        for name in self.base.keys() - seen:
            self.apply_module(name, None)

    @torch.no_grad()
    def apply_module(self, name: str, delta: torch.Tensor | None) -> None:
        """One module at a time, so a merge can stream without holding every dW at once."""
        w0 = self.base[name]
        weight = self.model.get_submodule(name).weight
        weight.copy_(w0 if delta is None else (w0.float() + delta.to(w0.device).float()).to(w0.dtype))


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """Module paths LANGUAGE_MODEL_TARGETS selects in a plain model (what add_lora would adapt)."""
    import re

    pattern = re.compile(LANGUAGE_MODEL_TARGETS)
    return [name for name, module in model.named_modules() if pattern.fullmatch(name) and hasattr(module, "weight")]


def random_adapter(model: torch.nn.Module, lora: LoraSettings, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA state dict for ``model`` (peft's keys, fp32 on the CPU as the learner publishes them) with
    random factors, for benchmarks: A ~ N(0, 1/in), B ~ N(0, 1e-6), a small update that leaves the model's
    numerics sane."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for module in lora_target_modules(model):
        out_features, in_features = model.get_submodule(module).weight.shape
        a = torch.randn(lora.rank, in_features, generator=g, device=device) / in_features**0.5
        b = torch.randn(out_features, lora.rank, generator=g, device=device) * 1e-3
        out[f"base_model.model.{module}.lora_A.weight"] = a.cpu()
        out[f"base_model.model.{module}.lora_B.weight"] = b.cpu()
    return out
