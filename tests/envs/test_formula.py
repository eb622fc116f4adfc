from fractions import Fraction

import pytest

from envs.formula import evaluate, numbers_in, to_string


@pytest.mark.parametrize(
    "tokens, value",
    [
        (["1", "+", "2", "*", "3"], Fraction(7)),  # * binds tighter: 1 + 6
        (["(", "1", "+", "2", ")", "*", "3"], Fraction(9)),
        (["8", "/", "(", "3", "-", "8", "/", "3", ")"], Fraction(24)),  # 3 - 8/3 = 1/3; 8 / (1/3) = 24
        (["10", "-", "4", "-", "3"], Fraction(3)),  # left-associative: (10-4)-3
        (["8", "/", "4", "/", "2"], Fraction(1)),  # (8/4)/2
        (["7", "/", "2"], Fraction(7, 2)),  # exact, not 3.5 float nor 3 floor
        (["(", "(", "5", ")", ")"], Fraction(5)),
    ],
)
def test_well_formed_formulas_evaluate_exactly(tokens, value):
    assert evaluate(tokens) == value


@pytest.mark.parametrize(
    "tokens",
    [
        [],
        ["1", "2"],  # two number tokens never fuse into 12
        ["-", "3"],  # no unary minus
        ["*", "*", "2"],  # no power operator
        ["3", "/", "/", "2"],  # no floor division
        ["(", "1", "+", "2"],
        ["1", "+", "2", ")"],
        ["1", "+"],
        ["4", "/", "(", "2", "-", "2", ")"],  # division by zero
        ["(", ")"],
    ],
)
def test_malformed_formulas_have_no_value(tokens):
    assert evaluate(tokens) is None


def test_helpers():
    assert numbers_in(["(", "10", "+", "2", ")"]) == [10, 2]
    assert to_string(["(", "10", "+", "2", ")"]) == "(10+2)"  # length limits count "10" as two characters


import warnings  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TOKENS = [str(n) for n in range(1, 11)] + ["+", "-", "*", "/", "(", ")"]


def _python_value(tokens):
    """Reference: Python's own parser over Fraction-wrapped numbers (safe: a fixed token vocabulary)."""
    source = "".join(f"Fraction({t})" if t.isdigit() else t for t in tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # "(1)(2)" warns before it fails
        try:
            return eval(source, {"Fraction": Fraction})  # noqa: S307 - test-only reference
        except (SyntaxError, ZeroDivisionError, TypeError):
            return None


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14))
def test_parser_agrees_with_python_on_arbitrary_token_sequences(tokens):
    ours = evaluate(tokens)
    reference = _python_value(tokens)
    if ours is not None:
        assert ours == reference  # the same value, exactly
    if reference is None:
        assert ours is None  # nothing Python rejects is accepted
    # Python also accepts unary signs ("-3", "1++2"), which our grammar rejects on purpose.
