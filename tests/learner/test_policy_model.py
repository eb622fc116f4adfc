import torch

from learner.policy_model import PolicyModel
from models.engines.hf import HFEngine
from models.lora import LoraSettings

LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)


def test_only_language_model_lora_and_value_head_train():
    policy = PolicyModel("embedded:xs", LORA)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("value_head.") for n in names)
    assert not any("visual" in n for n in names)  # the vision tower's MLPs share names; never adapted
    assert any("language_model" in n and "mlp.gate_proj" in n for n in names)


def test_values_and_logprobs_from_one_forward_and_gradients_reach_lora():
    policy = PolicyModel("embedded:xs", LORA)
    prompts = policy.processor.encode([("task one", "state a"), ("task two", "state bb")], [None, None])
    out, values = policy.evaluate(prompts, [[40, 41, 42], [43]], temperature=1.0)
    assert out.logprobs.shape == (2, 3) and values.shape == (2,)
    assert out.mask.tolist() == [[True, True, True], [True, False, False]]
    (values.sum() - out.logprobs.sum()).backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all(g is not None for n, g in grads.items() if "lora_A" in n or n.startswith("value_head"))
    assert all(p.grad is None for n, p in policy.named_parameters() if not p.requires_grad)


def test_adapter_moves_to_an_engine_with_the_same_function():
    policy = PolicyModel("embedded:xs", LORA)
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    engine = HFEngine("embedded:xs", LORA)
    engine.load_adapter(policy.adapter(), version=1)
    from models.engines.base import PromptInput

    prompts = [PromptInput("task one", None, "state a")]
    responses = [[40, 41, 42, 2]]
    with torch.no_grad():
        ours = policy.evaluate(engine.encode(prompts), responses, 1.0)[0].logprobs[0].tolist()
    theirs = engine.score(prompts, responses, 1.0)[0]
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-4


def test_shared_prefix_and_computed_once_images_give_the_same_losses_and_gradients():
    """The learner's fast path (the common instruction once per micro-batch, image features reused) against
    the straightforward one: token log-probs, values and every LoRA and value-head gradient to 1e-5."""
    import dataclasses

    import numpy as np

    from models import scoring

    policy = PolicyModel("embedded:xs", LoraSettings(rank=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # a LoRA that does something, so its gradients are not trivially alike
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(3)]
    instruction = "You are playing a card game. Reach the target with the cards shown. Answer in JSON."
    prompts = policy.processor.encode([(instruction, f"step {i}: cards {i * 7}") for i in range(3)], frames)
    responses = [[40, 41, 42, 43, 2], [44, 2], [45, 46, 47, 2]]
    batch = policy.processor.model_inputs(prompts, responses, pad_left=False)
    assert scoring.shared_prefix(batch, [len(p.input_ids) for p in prompts]) >= 16  # the path is taken

    def run(fast: bool):
        policy.zero_grad()
        images = policy.image_features(prompts) if fast else None
        encoded = [dataclasses.replace(p, pixel_values=None) for p in prompts] if fast else prompts
        out, values = policy.evaluate(encoded, responses, 0.7, images=images, share_prefix=fast, entropy=True)
        (out.logprobs.sum() * 0.3 + values.pow(2).sum()).backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
        return out, values, grads

    plain, fast = run(False), run(True)
    assert torch.allclose(plain[0].logprobs, fast[0].logprobs, atol=1e-5)
    assert torch.allclose(plain[0].entropy, fast[0].entropy, atol=1e-5)
    assert torch.allclose(plain[1], fast[1], atol=1e-5)
    assert plain[2].keys() == fast[2].keys() and len(plain[2]) > 10
    for name, grad in plain[2].items():
        assert torch.allclose(grad, fast[2][name], atol=1e-5), name
    assert any(grad.abs().max() > 1e-3 for grad in plain[2].values())
