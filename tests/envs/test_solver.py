import itertools
import random
from fractions import Fraction

from envs.formula import evaluate
from envs.solver import is_solvable, shortest_solution, solutions


def test_three_three_eight_eight_needs_exact_fractions():
    # The only way: 8 / (3 - 8/3) = 8 / (1/3) = 24; float eval gives 23.999999999999996.
    assert is_solvable([3, 3, 8, 8])
    assert solutions([3, 3, 8, 8]) == [("8", "/", "(", "3", "-", "8", "/", "3", ")")]


def test_every_solution_evaluates_to_the_target_and_uses_each_card_once():
    rng = random.Random(0)
    for _ in range(60):
        hand = [rng.randint(1, 10) for _ in range(4)]
        for tokens in solutions(hand):
            assert evaluate(tokens) == 24
            assert sorted(int(t) for t in tokens if t.isdigit()) == sorted(hand)


def test_known_hands():
    assert not is_solvable([1, 1, 1, 1])  # at most (1+1)*(1+1) = 4
    assert ("1", "*", "2", "*", "3", "*", "4") in solutions([1, 2, 3, 4])
    assert shortest_solution([10, 5, 10, 6]) == ("(", "10", "+", "10", ")", "*", "6", "/", "5")
    assert shortest_solution([1, 1, 1, 1]) is None
    assert solutions([6, 2], 12, "+*") == [("6", "*", "2")]  # one order per + and * (commuted forms are the same)
    assert not is_solvable([1, 10], 12, "+*")


def test_solvable_multisets_of_values_one_to_ten():
    # The classic count for the 24 game with cards 1..10: 566 of the 715 multisets are solvable.
    multisets = list(itertools.combinations_with_replacement(range(1, 11), 4))
    assert len(multisets) == 715
    assert sum(is_solvable(m) for m in multisets) == 566


def _slow_is_solvable(hand, target=24):
    """Reference: every permutation, operator triple and one of the 5 bracketings, as token formulas."""
    shapes = [
        "(( a o b ) o c ) o d",
        "( a o ( b o c ) ) o d",
        "( a o b ) o ( c o d )",
        "a o ( ( b o c ) o d )",
        "a o ( b o ( c o d ) )",
    ]
    for a, b, c, d in set(itertools.permutations(hand)):
        for ops in itertools.product("+-*/", repeat=3):
            for shape in shapes:
                numbers, operators, tokens = iter((a, b, c, d)), iter(ops), []
                for part in shape.replace("(", " ( ").replace(")", " ) ").split():
                    tokens.append(str(next(numbers)) if part in "abcd" else next(operators) if part == "o" else part)
                if evaluate(tokens) == Fraction(target):
                    return True
    return False


def test_fast_solver_matches_slow_reference_on_seeded_hands():
    rng = random.Random(1)
    hands = [[rng.randint(1, 10) for _ in range(4)] for _ in range(40)] + [[3, 3, 8, 8], [1, 1, 1, 1]]
    for hand in hands:
        assert is_solvable(hand) == _slow_is_solvable(hand), hand
        assert bool(solutions(hand)) == is_solvable(hand)
