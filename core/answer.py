"""The agent's answer format: what a prompt asks for, and the parser of the model's JSON answers.

The agent answers every step with one JSON object whose last key is ``"action"`` and which carries
``"thoughts"`` before it (card games also ``"cards"`` and ``"formula"``, NumberLine its two numbers:
DESIGN.md section 2). ``parse_response`` never raises: a malformed answer is a format penalty for
the rollout, and the action is then recovered from the ``"action"`` value when it can be, else the
configured fallback (the paper's random action, or the env's no-op where it has one). Two habits of
instruct checkpoints are not format errors (issue 14 item 7): a Markdown code fence (```json or
bare ```) around the whole object, and a JSON number as the action (``4`` for ``"4"``).

Which response tokens are thought tokens and which are action tokens comes from character
positions (``token_masks``): thought tokens are those that start before the last top-level
``"action"`` key (an opening code fence among them); the rest (the key, its value, the closing brace
and fence, the end token) are action tokens.
No token id is hard-coded (RL4VLM issue 17 broke on a tokenizer update that way).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ACTION_KEY = "action"


@dataclass(frozen=True)
class PromptSpec:
    """What an env's prompt asks for: the answer's keys in order and the action vocabulary."""

    env_id: str
    keys: tuple[str, ...]  # answer keys, "action" last
    actions: tuple[str, ...] | None  # the env's action names by index; None = free text (ALFWorld)
    noop: str | None = None  # an action that changes nothing, for the "noop" fallback


@dataclass(frozen=True)
class PromptText:
    """A user message in two parts; the image (when there is one) goes between them.

    ``text`` is the task's fixed instruction and answer format, the same at every step, so a batch of
    prompts shares a long token prefix that the engine computes once (prefix caching); ``tail`` holds
    what changes (the state in words, where the image does not show it).
    """

    text: str
    tail: str


def format_answer(spec: PromptSpec, fields: dict[str, Any]) -> str:
    """The JSON answer with the spec's keys in order (how demonstrations are written)."""
    missing = [k for k in spec.keys if k not in fields]
    if missing:
        raise ValueError(f"answer for {spec.env_id} lacks {missing}")
    return json.dumps({k: fields[k] for k in spec.keys}, ensure_ascii=True)


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedResponse:
    valid: bool  # one well-formed JSON object (bare or in one code fence), every asked key, a known action
    action_text: str | None  # the "action" value as written (a number as its decimal string), when readable
    action: int | str | None  # env action: index into the vocabulary, the command (ALFWorld), or None
    thoughts: str | None
    action_key_start: int | None  # char index of the last top-level "action" key; None if absent


def parse_response(text: str, spec: PromptSpec) -> ParsedResponse:
    """Read a model answer; never raises. ``action`` is None when no action could be recovered."""
    keys = _top_level_keys(text)
    action_keys = [k for k in keys if k[0] == ACTION_KEY]
    key_start = action_keys[-1][1] if action_keys else None
    action_text = _as_action_text(_read_value(text, action_keys[-1][2])) if action_keys else None
    obj = _whole_object(text)
    thoughts = obj.get("thoughts") if isinstance(obj, dict) else None
    action = _to_action(action_text, spec)
    valid = (
        isinstance(obj, dict)
        and all(k in obj for k in spec.keys)
        and _as_action_text(obj.get(ACTION_KEY)) is not None
        and isinstance(thoughts, str)
        and action is not None
    )
    return ParsedResponse(valid, action_text, action, thoughts if isinstance(thoughts, str) else None, key_start)


def _as_action_text(value: Any) -> str | None:
    """An action value as text: a string as written, a number as the string that names it.

    Instruct checkpoints write ``"action": 4`` for the card token ``"4"``, so a number names the
    action its integer decimal form spells (4 and 4.0 read ``"4"``, -1 reads ``"-1"``) and must then
    match the vocabulary exactly like any string; 2.5 reads ``"2.5"``, which no env has. Booleans are
    not numbers here (JSON ``true`` is no action), nor are NaN and the infinities Python's JSON admits.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            value = int(value)
    return str(value)


def _to_action(action_text: str | None, spec: PromptSpec) -> int | str | None:
    if action_text is None:
        return None
    value = action_text.strip()
    if spec.actions is None:
        return value or None
    lowered = value.lower()
    for index, name in enumerate(spec.actions):
        if lowered == name:
            return index
    return None


def _whole_object(text: str) -> Any:
    """The JSON value when the text (trimmed) is exactly one JSON object, bare or fenced, else None.

    ``ValueError`` covers both a JSON syntax error and an integer too long for Python to convert
    (over 4300 digits), which would otherwise escape a parser that must never raise.
    """
    body = _unfenced(text.strip())
    if not body.startswith("{"):
        return None
    try:
        value, end = json.JSONDecoder().raw_decode(body)
    except (ValueError, RecursionError):
        return None
    return value if end == len(body) and isinstance(value, dict) else None


_FENCE = "```"


def _unfenced(text: str) -> str:
    """The inside of a Markdown code fence (```json or bare ```) around all of ``text``, else ``text``.

    The fence is layout, not a format error. Only a fence that opens the answer and closes it is
    removed, so prose before or after a fenced object fails just as it does around a bare one, and an
    unclosed fence fails too. Offsets are unaffected: the key scan reads the original text, where a
    backtick is neither a quote nor a bracket.
    """
    if len(text) < 2 * len(_FENCE) or not (text.startswith(_FENCE) and text.endswith(_FENCE)):
        return text
    inner = text[len(_FENCE) : -len(_FENCE)].lstrip(" ")
    if inner[:4].lower() == "json":
        inner = inner[4:]
    return inner.strip()


def _top_level_keys(text: str) -> list[tuple[str, int, int]]:
    """(key, start of its opening quote, index just after its colon) for keys at depth 1.

    A tolerant scan: it follows strings (with escapes) and brackets, so a truncated or otherwise
    malformed answer still yields the keys written so far, and a key-like text inside a string
    value (``"thoughts": "say \\"action\\": +"``) is never taken for a key.
    """
    keys, depth, i, n = [], 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            if depth == 1 and end < n:
                j = end + 1
                while j < n and text[j] in " \t\r\n":
                    j += 1
                if j < n and text[j] == ":":
                    try:
                        name = json.loads(text[i : end + 1])
                    except json.JSONDecodeError:
                        name = None
                    if isinstance(name, str):
                        keys.append((name, i, j + 1))
            i = end + 1
        elif c in "{[":
            depth += 1
            i += 1
        elif c in "}]":
            depth = max(depth - 1, 0)
            i += 1
        else:
            i += 1
    return keys


def _string_end(text: str, start: int) -> int:
    """Index of the closing quote of the string opening at ``start`` (len(text) if unterminated)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i
        else:
            i += 1
    return len(text)


def _read_value(text: str, start: int) -> Any:
    """The JSON value starting at ``start`` (after spaces), or None when it does not parse."""
    i = start
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    try:
        value, _ = json.JSONDecoder().raw_decode(text, i)
    except (ValueError, RecursionError):
        return None  # e.g. an unterminated string, or a number too long to convert: no action to trust
    return value


# ----------------------------------------------------------------------------- token masks


def token_masks(spans: Sequence[tuple[int, int]], action_key_start: int | None) -> tuple[list[bool], list[bool]]:
    """Thought and action masks over response tokens from their character spans.

    Thought tokens start before the last ``"action"`` key; every later token is an action token.
    Without an action key every token is a thought token (nothing before the key is "all of it").
    Tokens with no characters (the end-of-turn token) belong to the action part when a key exists.
    """
    if action_key_start is None:
        return [True] * len(spans), [False] * len(spans)
    thought = [start < action_key_start and end > start for start, end in spans]
    return thought, [not t for t in thought]
