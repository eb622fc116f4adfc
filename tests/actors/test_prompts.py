import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from actors.prompts import SPECS, format_answer, parse_response, prompt_text, spec_for, token_masks
from envs.points24 import Points24Env

P24 = spec_for(envs.POINTS24)
ALF = spec_for(envs.ALFWORLD)


def test_well_formed_answers_parse():
    text = format_answer(
        envs.POINTS24, {"cards": [10, 9, 7, 4], "formula": "", "thoughts": "plan 10*4-7-9", "action": "10"}
    )
    parsed = parse_response(text, P24)
    assert parsed.valid and parsed.action == 9 and parsed.action_text == "10" and parsed.thoughts == "plan 10*4-7-9"
    assert text[parsed.action_key_start :].startswith('"action"')
    nl = parse_response(
        '{"current number": 1, "target number": 3, "thoughts": "go right", "action": "+"}', SPECS[envs.NUMBERLINE]
    )
    assert nl.valid and nl.action == 1
    bj = parse_response('{"thoughts": "16 vs 10", "action": "HIT"}', SPECS[envs.BLACKJACK])
    assert bj.valid and bj.action == 1  # action names are matched case-insensitively
    alf = parse_response('{"thoughts": "find the mug", "action": "go to countertop 1"}', ALF)
    assert alf.valid and alf.action == "go to countertop 1"


@pytest.mark.parametrize(
    "text, valid, action",
    [
        # "action" inside the thoughts string is not a key; the real key comes after it.
        (
            '{"cards": [1, 2, 3, 4], "formula": "", "thoughts": "say \\"action\\": \\"=\\" later", "action": "("}',
            True,
            14,
        ),
        # nested quotes and braces inside strings
        ('{"cards": [1, 2, 3, 4], "formula": "(1+2", "thoughts": "a {b} \\"c\\" [d]", "action": ")"}', True, 15),
        # truncated in the thoughts: no action key, no action
        ('{"cards": [1, 2, 3, 4], "formula": "", "thoughts": "plan (1+2)*', False, None),
        # truncated after the action value: the action is readable, the JSON is not valid
        ('{"cards": [1, 2, 3, 4], "formula": "", "thoughts": "ok", "action": "*"', False, 12),
        # truncated inside the action value
        ('{"cards": [1, 2, 3, 4], "formula": "", "thoughts": "ok", "action": "1', False, None),
        # an action outside the vocabulary
        ('{"cards": [1, 2, 3, 4], "formula": "", "thoughts": "ok", "action": "11"}', False, None),
        # a missing key the prompt asks for
        ('{"cards": [1, 2, 3, 4], "thoughts": "ok", "action": "1"}', False, 0),
        # text after the object
        ('{"cards": [1, 2, 3, 4], "formula": "", "thoughts": "ok", "action": "1"} and more', False, 0),
        # two action keys: the last one counts
        ('{"cards": [], "formula": "", "action": "1", "thoughts": "no", "action": "2"}', True, 1),
        # a non-string action
        ('{"cards": [], "formula": "", "thoughts": "ok", "action": 7}', False, None),
        ("", False, None),
        ("not json at all", False, None),
        ('"action": "+"', False, None),  # not inside an object: depth 0, no key
    ],
)
def test_tricky_answers(text, valid, action):
    parsed = parse_response(text, P24)
    assert parsed.valid is valid
    assert parsed.action == action


def test_action_key_position_drives_the_masks():
    text = '{"thoughts": "t", "action": "+"}'
    parsed = parse_response(text, SPECS[envs.NUMBERLINE])
    key = parsed.action_key_start
    assert key == text.index('"action"')
    # Four tokens: '{"thoughts": "t", ' | '"action"' | ': "+"}' | end token (zero width).
    spans = [(0, key), (key, key + 8), (key + 8, len(text)), (len(text), len(text))]
    thought, action = token_masks(spans, key)
    assert thought == [True, False, False, False] and action == [False, True, True, True]
    # No key: every token counts as thought.
    assert token_masks(spans, None) == ([True] * 4, [False] * 4)


def test_prompts_put_the_fixed_instruction_first():
    env = Points24Env()
    _, first = env.reset(seed=0)
    second = env.step(10)[4]  # append "+"
    a, b = prompt_text(envs.POINTS24, first, True), prompt_text(envs.POINTS24, second, True)
    assert a.text == b.text and a.tail != b.tail  # the instruction is shared, the state is not
    assert b.tail == "Current formula: +"
    text_mode = prompt_text(envs.POINTS24, first, False)
    assert "Your cards:" in text_mode.tail and "values" in text_mode.tail
    for env_id in envs.ENV_IDS:
        assert env_id in SPECS


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text):
    for spec in SPECS.values():
        parsed = parse_response(text, spec)
        if parsed.valid:
            assert parsed.action is not None and isinstance(parsed.thoughts, str)
        if parsed.action_key_start is not None:
            assert text[parsed.action_key_start] == '"'


@settings(max_examples=300, deadline=None)
@given(
    thoughts=st.text(max_size=60),
    cards=st.lists(st.integers(1, 10), max_size=4),
    formula=st.text(alphabet="0123456789+-*/()", max_size=12),
    action=st.sampled_from(P24.actions),
)
def test_expert_shaped_answers_round_trip(thoughts, cards, formula, action):
    text = format_answer(envs.POINTS24, {"cards": cards, "formula": formula, "thoughts": thoughts, "action": action})
    parsed = parse_response(text, P24)
    assert parsed.valid and parsed.thoughts == thoughts and P24.actions[parsed.action] == action
    assert text[parsed.action_key_start :] == f'"action": {json.dumps(action)}}}'


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.lists(st.integers(0, 5), max_size=40))
def test_masks_partition_the_tokens(text, cuts):
    # Random tokenisation of a random text into spans; masks must be complementary.
    bounds = sorted({0, len(text), *[min(c * 7, len(text)) for c in cuts]})
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    key = parse_response(text, ALF).action_key_start
    thought, action = token_masks(spans, key)
    assert len(thought) == len(action) == len(spans)
    assert all(t != a for t, a in zip(thought, action, strict=True)) or key is None
