"""Exact solver for the card games: every formula that makes the target from a hand.

A hand's card values are combined two at a time with ``+ - * /`` (both orders for ``-`` and
``/``) until one value is left; this visits every binary expression tree over the cards. Values
are kept as integer pairs (numerator, denominator > 0), which is exact and about ten times faster
than ``fractions.Fraction``; a full Points24 hand takes a few milliseconds, and ``is_solvable`` is
cached per value multiset (715 multisets of four values in 1..10), so labelling every hand is
cheap. Formulas come back as action-token tuples with the fewest parentheses that keep their
meaning, e.g. ``('8', '/', '(', '3', '-', '8', '/', '3', ')')``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache

# An expression tree: a card value, or (operator, left, right).
Node = int | tuple
# A search item: numerator, denominator (> 0), expression tree (None when not tracked).
Item = tuple[int, int, Node | None]

ALL_OPERATORS = "+-*/"
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def solutions(values: Sequence[int], target: int = 24, operators: str = ALL_OPERATORS) -> list[tuple[str, ...]]:
    """All formulas (token tuples) that use each value exactly once and equal ``target``.

    Distinct up to the order of the two operands of ``+`` and ``*``: ``6*2`` is listed, ``2*6`` is not.

    Sorted by length, then lexicographically, so ``solutions(...)[0]`` is a shortest one.
    """
    found: set[tuple[str, ...]] = set()
    items = [(v, 1, v) for v in values]
    for numerator, denominator, node in _leaves(items, operators, track=True):
        if numerator == target * denominator:
            found.add(tuple(to_tokens(node)))
    return sorted(found, key=lambda tokens: (len(tokens), tokens))


def shortest_solution(
    values: Sequence[int], target: int = 24, operators: str = ALL_OPERATORS
) -> tuple[str, ...] | None:
    """A solution with the fewest tokens (ties broken lexicographically), or None."""
    found = solutions(values, target, operators)
    return found[0] if found else None


def is_solvable(values: Sequence[int], target: int = 24, operators: str = ALL_OPERATORS) -> bool:
    """Whether some formula over ``values`` equals ``target`` (cached per multiset)."""
    return _is_solvable_sorted(tuple(sorted(values)), target, operators)


@cache
def _is_solvable_sorted(values: tuple[int, ...], target: int, operators: str) -> bool:
    items = [(v, 1, None) for v in values]
    return any(n == target * d for n, d, _ in _leaves(items, operators, track=False))


def _leaves(items: list[Item], operators: str, track: bool) -> Iterator[Item]:
    """Every value reachable by combining all items; a generator, so callers can stop early."""
    if len(items) == 1:
        yield items[0]
        return
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = items[:i] + items[i + 1 : j] + items[j + 1 :]
            for combined in _combine(items[i], items[j], operators, track):
                yield from _leaves(rest + [combined], operators, track)


def _combine(a: Item, b: Item, operators: str, track: bool) -> Iterator[Item]:
    """The results of one operator applied to a and b, in both orders where order matters."""
    an, ad, anode = a
    bn, bd, bnode = b
    if "+" in operators:
        yield an * bd + bn * ad, ad * bd, ("+", anode, bnode) if track else None
    if "*" in operators:
        yield an * bn, ad * bd, ("*", anode, bnode) if track else None
    if "-" in operators:
        yield an * bd - bn * ad, ad * bd, ("-", anode, bnode) if track else None
        yield bn * ad - an * bd, ad * bd, ("-", bnode, anode) if track else None
    if "/" in operators:
        if bn != 0:
            yield _divide(an, ad, bn, bd) + ((("/", anode, bnode) if track else None),)
        if an != 0:
            yield _divide(bn, bd, an, ad) + ((("/", bnode, anode) if track else None),)


def _divide(an: int, ad: int, bn: int, bd: int) -> tuple[int, int]:
    """(an/ad) / (bn/bd) with a positive denominator; bn != 0."""
    numerator, denominator = an * bd, ad * bn
    return (-numerator, -denominator) if denominator < 0 else (numerator, denominator)


def to_tokens(node: Node) -> list[str]:
    """Tokens of an expression tree with only the parentheses its meaning needs."""
    if isinstance(node, int):
        return [str(node)]
    op, left, right = node
    return _operand(left, op, is_right=False) + [op] + _operand(right, op, is_right=True)


def _operand(node: Node, parent_op: str, is_right: bool) -> list[str]:
    tokens = to_tokens(node)
    if isinstance(node, int):
        return tokens
    child, parent = _PRECEDENCE[node[0]], _PRECEDENCE[parent_op]
    # a-(b+c) and a/(b*c) need their parentheses; a+(b-c) and a*(b/c) do not (exact rationals).
    needs_parens = child < parent or (is_right and child == parent and parent_op in "-/")
    return ["(", *tokens, ")"] if needs_parens else tokens
