import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from core.answer import format_answer, parse_response, token_masks
from envs.points24 import Points24Env
from envs.tasks import TASKS, prompt_text, spec_for
from models.loading import load_processor
from models.tokenizer import token_char_spans

P24 = spec_for(envs.POINTS24)
ALF = spec_for(envs.ALFWORLD)


def test_well_formed_answers_parse():
    text = format_answer(P24, {"cards": [10, 9, 7, 4], "formula": "", "thoughts": "plan 10*4-7-9", "action": "10"})
    parsed = parse_response(text, P24)
    assert parsed.valid and parsed.action == 9 and parsed.action_text == "10" and parsed.thoughts == "plan 10*4-7-9"
    assert text[parsed.action_key_start :].startswith('"action"')
    nl = parse_response(
        '{"current number": 1, "target number": 3, "thoughts": "go right", "action": "+"}', TASKS[envs.NUMBERLINE].spec
    )
    assert nl.valid and nl.action == 1
    bj = parse_response('{"thoughts": "16 vs 10", "action": "HIT"}', TASKS[envs.BLACKJACK].spec)
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
        # a number names the token its decimal form spells (issue 14 item 7): 7 is "7", index 6
        ('{"cards": [], "formula": "", "thoughts": "ok", "action": 7}', True, 6),
        # a boolean is not a number here
        ('{"cards": [], "formula": "", "thoughts": "ok", "action": true}', False, None),
        ("", False, None),
        ("not json at all", False, None),
        ('"action": "+"', False, None),  # not inside an object: depth 0, no key
    ],
)
def test_tricky_answers(text, valid, action):
    parsed = parse_response(text, P24)
    assert parsed.valid is valid
    assert parsed.action == action


P24_BARE = '{"cards": [1, 2, 3, 4], "formula": "(1+2", "thoughts": "close it", "action": ")"}'


@pytest.mark.parametrize(
    "text",
    [
        f"```json\n{P24_BARE}\n```",
        f"```\n{P24_BARE}\n```",
        f"```json{P24_BARE}```",
        f"\n  ```JSON\n{P24_BARE}\n```\n",  # whitespace around, tag in capitals
        f"``` json\n\n{P24_BARE}\n\n```",  # a space before the tag, blank lines inside
    ],
)
def test_a_code_fence_around_the_object_is_no_format_error(text):
    bare, fenced = parse_response(P24_BARE, P24), parse_response(text, P24)
    assert (bare.valid, bare.action_text, bare.action, bare.thoughts) == (True, ")", 15, "close it")
    assert (fenced.valid, fenced.action_text, fenced.action, fenced.thoughts) == (True, ")", 15, "close it")
    # The offset is into the fenced text, so the fence and everything before the key is thought.
    assert fenced.action_key_start == text.index('"action"') == text.index(P24_BARE) + bare.action_key_start
    assert text[fenced.action_key_start :].startswith('"action"')


@pytest.mark.parametrize(
    "text, action",
    [
        # prose before or after the fence fails as it does around a bare object; the action is still read
        (f"Here is my answer:\n```json\n{P24_BARE}\n```", 15),
        (f"```json\n{P24_BARE}\n```\nThat closes the bracket.", 15),
        (f"```json\n{P24_BARE}", 15),  # unclosed fence
        (f"{P24_BARE}\n```", 15),  # a closing fence with no opening one
        (f"```python\n{P24_BARE}\n```", 15),  # a fence that says it holds something else
        (f"```json\n{P24_BARE}\n{P24_BARE}\n```", 15),  # two objects in one fence
        (f"```json\n```json\n{P24_BARE}\n```\n```", 15),  # a fence inside a fence
        ("```json\n```", None),
        ("```", None),
    ],
)
def test_only_a_fence_around_exactly_one_object_is_accepted(text, action):
    parsed = parse_response(text, P24)
    assert parsed.valid is False and parsed.action == action


def test_fenced_answer_masks_from_real_token_spans():
    tokenizer = load_processor("embedded:xs").tokenizer
    answer = '```json\n{"cards": [1, 2, 3, 4], "formula": "", "thoughts": "4*3*2*1", "action": 4}\n```'
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    text, spans = token_char_spans(tokenizer, ids)
    parsed = parse_response(text, P24)
    assert text == answer and parsed.valid and parsed.action == 3
    thought, action = token_masks(spans, parsed.action_key_start)
    # The token ' "' starts before the key, so the key's opening quote rides with the thoughts; the
    # closing fence and the end token (zero width, last) are action tokens.
    assert "".join(text[a:b] for (a, b), t in zip(spans, thought, strict=True) if t) == (
        '```json\n{"cards": [1, 2, 3, 4], "formula": "", "thoughts": "4*3*2*1", "'
    )
    assert "".join(text[a:b] for (a, b), t in zip(spans, action, strict=True) if t) == 'action": 4}\n```'
    assert action[-1] and spans[-1][0] == spans[-1][1]


def _answer(env_id, action_json):
    """A valid-shaped answer for ``env_id`` with the action written as the raw JSON ``action_json``."""
    prefix = {
        envs.POINTS24: '{"cards": [1, 2, 3, 4], "formula": "", ',
        envs.NUMBERLINE: '{"current number": 1, "target number": 3, ',
    }.get(env_id, "{")
    return f'{prefix}"thoughts": "ok", "action": {action_json}}}'


@pytest.mark.parametrize(
    "env_id, action_json, valid, action_text, action",
    [
        # A number names the action its decimal form spells (issue 14 item 7), exactly as the string would.
        (envs.POINTS24, "4", True, "4", 3),
        (envs.POINTS24, "10", True, "10", 9),
        (envs.POINTS24, "4.0", True, "4", 3),  # an integral float is that integer
        (envs.POINTS24, "1e1", True, "10", 9),
        (envs.ALFWORLD, "3", True, "3", "3"),  # free-text commands: the same as the string "3"
        # Numbers that name no action: the value is read, no action is recovered.
        (envs.POINTS24, "11", False, "11", None),
        (envs.POINTS24, "0", False, "0", None),
        (envs.POINTS24, "2.5", False, "2.5", None),
        (envs.POINTS24, "-4", False, "-4", None),
        (envs.NUMBERLINE, "-1", False, "-1", None),  # NumberLine's actions are "-" and "+", not signed numbers
        (envs.NUMBERLINE, "1", False, "1", None),
        (envs.BLACKJACK, "1", False, "1", None),  # a number is not an index into the vocabulary
        # Not numbers here: booleans, NaN and infinities (Python's JSON reads all three).
        (envs.POINTS24, "true", False, None, None),
        (envs.POINTS24, "NaN", False, None, None),
        (envs.POINTS24, "1e400", False, None, None),
        (envs.POINTS24, "Infinity", False, None, None),
        (envs.POINTS24, "null", False, None, None),
        (envs.POINTS24, "[4]", False, None, None),
        # A number too long for Python to convert (over 4300 digits) must not escape as ValueError.
        pytest.param(envs.POINTS24, "1" * 5000, False, None, None, id="5000-digits"),
    ],
)
def test_a_number_names_the_action_its_decimal_form_spells(env_id, action_json, valid, action_text, action):
    text = _answer(env_id, action_json)
    parsed = parse_response(text, TASKS[env_id].spec)
    assert (parsed.valid, parsed.action_text, parsed.action) == (valid, action_text, action)
    assert text[parsed.action_key_start :] == f'"action": {action_json}}}'


def test_a_number_and_its_string_parse_alike_in_a_fence():
    by_number = parse_response("```json\n" + _answer(envs.POINTS24, "4") + "\n```", P24)
    by_string = parse_response("```json\n" + _answer(envs.POINTS24, '"4"') + "\n```", P24)
    assert (by_number.valid, by_number.action_text, by_number.action, by_number.thoughts) == (True, "4", 3, "ok")
    assert (by_string.valid, by_string.action_text, by_string.action, by_string.thoughts) == (True, "4", 3, "ok")


def test_action_key_position_drives_the_masks():
    text = '{"thoughts": "t", "action": "+"}'
    parsed = parse_response(text, TASKS[envs.NUMBERLINE].spec)
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
        assert env_id in TASKS


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text):
    for spec in (t.spec for t in TASKS.values()):
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
    text = format_answer(
        TASKS[envs.POINTS24].spec, {"cards": cards, "formula": formula, "thoughts": thoughts, "action": action}
    )
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
