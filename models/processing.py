"""Turning (prompt text, image) into Qwen2.5-VL inputs, without torchvision and without video.

The stock ``Qwen2_5_VLProcessor`` insists on a video processor, which needs torchvision, which cannot
sit beside the CPU torch wheel (DESIGN.md section 5). What it does for images is small, so we do it
here: apply the tokenizer's chat template, run ``Qwen2VLImageProcessorPil`` once per batch, expand
the single ``<|image_pad|>`` into ``grid_t*grid_h*grid_w / merge**2`` copies, and mark those ids
with ``mm_token_type_ids = 1`` (0 for text, including every generated token). Without the type ids
transformers v5 falls back to 1-D positions and log-probs drift (DESIGN.md section 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

IMAGE_TOKEN = "<|image_pad|>"


@dataclass
class EncodedPrompt:
    """One prompt, unpadded."""

    input_ids: list[int]  # (L,) with the image placeholder expanded
    pixel_values: torch.Tensor | None  # (n_patches, 3 * temporal_patch * patch * patch); None once featurised
    image_grid_thw: torch.Tensor | None  # (1, 3)


class VLProcessor:
    """Tokenizer + PIL image processor for Qwen2.5-VL-architecture models."""

    def __init__(self, tokenizer, image_processor: Qwen2VLImageProcessorPil):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.merge_size = image_processor.merge_size
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.stop_token_ids = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None})
        # Vision placeholders are never generated: a sampled <|image_pad|> would be taken for an image
        # slot by the next forward. Sampling and scoring both mask them (models.scoring.tempered_log_probs).
        vision = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
        ids = [tokenizer.convert_tokens_to_ids(t) for t in vision]
        self.banned_token_ids = sorted({i for i in ids if i is not None and i != tokenizer.unk_token_id})
        # The ids the tokenizer knows. Models often have more embedding rows than that (padding, or a
        # random-weight stand-in with a smaller tokenizer): those rows are never sampled or scored.
        self.vocab_size = len(tokenizer)

    def chat_text(self, text: str, tail: str, with_image: bool) -> str:
        """The chat-templated prompt: ``text``, the image placeholder (when there is an image), ``tail``."""
        if with_image:
            content = [{"type": "text", "text": text}, {"type": "image"}, {"type": "text", "text": tail}]
        else:
            content = [{"type": "text", "text": f"{text}\n{tail}"}]
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )

    def encode(self, texts: Sequence[tuple[str, str]], images: Sequence[np.ndarray | None]) -> list[EncodedPrompt]:
        """Encode a batch: (text, tail) pairs and their images (None where a prompt has no image)."""
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        chats = [self.chat_text(t, tail, img is not None) for (t, tail), img in zip(texts, images, strict=True)]
        ids = self.tokenizer(chats, add_special_tokens=False)["input_ids"]
        with_image = [i for i, img in enumerate(images) if img is not None]
        pixels: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if with_image:
            for i in with_image:
                pixels[i] = self.pixels(images[i])
        encoded = []
        for i, token_ids in enumerate(ids):
            if i in pixels:
                values, grid = pixels[i]
                n_tokens = int(grid.prod()) // self.merge_size**2
                at = token_ids.index(self.image_token_id)
                token_ids = token_ids[:at] + [self.image_token_id] * n_tokens + token_ids[at + 1 :]
                encoded.append(EncodedPrompt(token_ids, values, grid))
            else:
                encoded.append(EncodedPrompt(list(token_ids), None, None))
        return encoded

    def model_inputs(
        self, prompts: Sequence[EncodedPrompt], responses: Sequence[Sequence[int]] | None = None, pad_left: bool = True
    ) -> dict[str, torch.Tensor]:
        """Padded model inputs for prompts (with responses appended, when given).

        Left padding for generation (every prompt ends at the last column), right padding for scoring.
        Returns input_ids, attention_mask, mm_token_type_ids (B, L) and, when any prompt has an image,
        image_grid_thw (n_images, 3) and pixel_values (sum of patches, D; left out when the prompts carry
        no pixels because their image features were computed once, models.scoring.image_features).
        """
        rows = [
            list(p.input_ids) + (list(responses[i]) if responses is not None else []) for i, p in enumerate(prompts)
        ]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
            start = width - len(row) if pad_left else 0
            input_ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
            attention[i, start : start + len(row)] = 1
            # Only the prompt's image placeholders are image tokens; response tokens are text (0).
            prompt_ids = input_ids[i, start : start + len(prompt.input_ids)]
            types[i, start : start + len(prompt.input_ids)] = (prompt_ids == self.image_token_id).long()
        batch = {"input_ids": input_ids, "attention_mask": attention, "mm_token_type_ids": types}
        images = [p for p in prompts if p.image_grid_thw is not None]
        if images:
            batch["image_grid_thw"] = torch.cat([p.image_grid_thw for p in images])
            if all(p.pixel_values is not None for p in images):  # else their features come precomputed
                batch["pixel_values"] = torch.cat([p.pixel_values for p in images])
        return batch

    def pixels(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values (n_patches, D), image_grid_thw (1, 3)) of one (H, W, 3) uint8 image.

        The same numbers as ``Qwen2VLImageProcessorPil`` (tests check it), about five times faster: one
        PIL bicubic resize of the uint8 image, then rescale, normalize and patchify in a few numpy
        operations instead of the generic per-image pipeline.
        """
        ip = self.image_processor
        height, width = image.shape[:2]
        factor = ip.patch_size * ip.merge_size
        new_h, new_w = smart_resize(height, width, factor, ip.size["shortest_edge"], ip.size["longest_edge"])
        if (new_h, new_w) != (height, width):
            image = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BICUBIC))
        mean = np.asarray(ip.image_mean, dtype=np.float32)
        std = np.asarray(ip.image_std, dtype=np.float32)
        scaled = (image.astype(np.float32) * np.float32(ip.rescale_factor) - mean) / std  # (H, W, C)
        p, m, t = ip.patch_size, ip.merge_size, ip.temporal_patch_size
        gh, gw = new_h // p, new_w // p
        patches = scaled.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)  # gh gw mh mw C ph pw
        patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
        flat = np.ascontiguousarray(patches).reshape(gh * gw, 3 * t * p * p)
        return torch.from_numpy(flat), torch.tensor([[1, gh, gw]], dtype=torch.long)

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VLProcessor:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
        return cls(tokenizer, image_processor)
