"""The trainable policy: Qwen2.5-VL + LoRA on the language model + a value head.

The value head is an MLP (hidden -> 1024 -> 512 -> 1, DESIGN.md section 2) on the final hidden state
of the prompt's last token, so one forward over prompt + response gives both the response tokens'
log-probs and the state value. Only LoRA and value-head parameters train; the base stays frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models import scoring
from models.loading import load_vlm
from models.lora import LoraSettings, adapter_state, add_lora, load_adapter_state
from models.processing import EncodedPrompt


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 1)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B,)
        return self.net(hidden.float()).squeeze(-1)


class PolicyModel(nn.Module):
    def __init__(
        self,
        model_path: str,
        lora: LoraSettings,
        dtype: str = "float32",
        device: str = "cpu",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        base, self.processor = load_vlm(model_path, dtype=dtype, device=device)
        self.lora = lora
        self.model = add_lora(base, lora)
        if gradient_checkpointing:  # non-reentrant: no input needs grad, dropout replays its masks
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.value_head = ValueHead(base.config.text_config.hidden_size).to(device)

    def evaluate(
        self, prompts: Sequence[EncodedPrompt], responses: Sequence[Sequence[int]], temperature: float, **options
    ) -> tuple[scoring.ScoreOutput, torch.Tensor]:
        """Token log-probs (B, T) of the responses and values (B,) of the prompts, in one forward
        (``options``: models.scoring.score's images, share_prefix and entropy)."""
        out = scoring.score(self.model, self.processor, prompts, responses, temperature, **options)
        return out, self.value_head(out.prompt_hidden)

    def image_features(self, prompts: Sequence[EncodedPrompt]) -> list[torch.Tensor | None] | None:
        """The prompts' image features, to reuse while the vision tower is frozen; None when it trains."""
        if scoring.vision_trains(self.model):
            return None
        return scoring.image_features(self.model, self.processor, prompts)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def adapter(self) -> dict[str, torch.Tensor]:
        """The LoRA weights, for engines and the teacher (models.lora.adapter_state)."""
        return adapter_state(self.model)

    def load_adapter(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state(self.model, state)
