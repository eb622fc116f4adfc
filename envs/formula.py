"""Exact arithmetic for the card games' formulas: a tiny parser over action tokens.

The reference gym_cards envs join the tokens into a string and call Python's ``eval``: float
rounding makes (3, 3, 8, 8) unsolvable, ``**`` and ``//`` slip through, and two number tokens in
a row fuse into one number (notes/gym_cards.md). Here a formula is a sequence of tokens, each
number token is one card, and the grammar admits only binary ``+ - * /`` and parentheses:

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := NUMBER | '(' expr ')'

Anything else (unary minus, two numbers in a row, unbalanced parentheses, division by zero) is
malformed: ``evaluate`` returns None and the env scores it as a wrong answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

OPERATORS = ("+", "-", "*", "/")
PARENS = ("(", ")")


def is_number(token: str) -> bool:
    return token.isdigit()


def evaluate(tokens: Sequence[str]) -> Fraction | None:
    """Value of a token formula as an exact rational, or None when it is malformed."""
    parser = _Parser(list(tokens))
    try:
        value = parser.expr()
    except _Malformed:
        return None
    if parser.pos != len(parser.tokens):
        return None  # trailing tokens, e.g. "(1+2))" or "3 4"
    return value


def numbers_in(tokens: Sequence[str]) -> list[int]:
    """The card values a formula uses, in order."""
    return [int(t) for t in tokens if is_number(t)]


def to_string(tokens: Sequence[str]) -> str:
    """The formula as the player would write it; its length is what the length limits count."""
    return "".join(tokens)


class _Malformed(Exception):
    pass


class _Parser:
    """Recursive descent over a token list; raises _Malformed at the first error."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise _Malformed("unexpected end of formula")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self._peek() in ("+", "-"):
            op = self._take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self._peek() in ("*", "/"):
            op = self._take()
            rhs = self.factor()
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise _Malformed("division by zero")
            else:
                value = value / rhs
        return value

    def factor(self) -> Fraction:
        token = self._take()
        if is_number(token):
            return Fraction(int(token))
        if token == "(":
            value = self.expr()
            if self._take() != ")":
                raise _Malformed("unclosed parenthesis")
            return value
        raise _Malformed(f"unexpected token {token!r}")
