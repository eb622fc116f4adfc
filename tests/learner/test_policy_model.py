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
