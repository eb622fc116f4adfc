"""The goal-condition rate on hand-written goals and facts (pure; no alfworld needed)."""

import pytest

from envs.alfworld_goal import goal_condition_rate, normalise, parse_goal, parse_sexpr

HEAT_GOAL = """(define (problem p) (:domain alfred)
  (:goal (and (exists (?r - receptacle) (exists (?o - object)
      (and (heatable ?o) (objectType ?o AppleType) (receptacleType ?r CounterTopType)
           (isHot ?o) (inReceptacle ?o ?r)))))))"""

TWO_GOAL = """(:goal (and (exists (?r - receptacle) (exists (?o1 - object)
   (and (objectType ?o1 MugType) (receptacleType ?r ShelfType) (inReceptacle ?o1 ?r)
        (exists (?o2 - object) (and (not (= ?o1 ?o2)) (objectType ?o2 MugType) (inReceptacle ?o2 ?r))))))))"""

THINGS = [
    ("apple1", "object"),
    ("apple2", "object"),
    ("mug1", "object"),
    ("mug2", "object"),
    ("countertop1", "receptacle"),
    ("shelf1", "receptacle"),
    ("sinkbasin1", "receptacle"),
]
STATIC = {
    ("objecttype", ("apple1", "appletype")),
    ("objecttype", ("apple2", "appletype")),
    ("heatable", ("apple1",)),
    ("heatable", ("apple2",)),
    ("objecttype", ("mug1", "mugtype")),
    ("objecttype", ("mug2", "mugtype")),
    ("receptacletype", ("countertop1", "countertoptype")),
    ("receptacletype", ("shelf1", "shelftype")),
    ("receptacletype", ("sinkbasin1", "sinkbasintype")),
}


def test_parse_goal_structure():
    (block,) = parse_goal(HEAT_GOAL)
    assert block.variables == (("?r", "receptacle"), ("?o", "object"))
    assert [lit.predicate for lit in block.literals] == [
        "heatable",
        "objecttype",
        "receptacletype",
        "ishot",
        "inreceptacle",
    ]
    assert block.n_conditions == 2  # isHot and inReceptacle; the rest says what things are
    assert block.literals[1].args == ("?o", "appletype")
    (two,) = parse_goal(TWO_GOAL)
    assert two.distinct == (("?o1", "?o2"),) and two.n_conditions == 2


def test_heat_goal_progress():
    blocks = parse_goal(HEAT_GOAL)
    start = STATIC | {("inreceptacle", ("apple1", "sinkbasin1"))}
    assert goal_condition_rate(blocks, start, THINGS) == 0.0
    heated = STATIC | {("ishot", ("apple1",))}
    assert goal_condition_rate(blocks, heated, THINGS) == 0.5  # 1 of 2 conditions
    # A cold apple on the countertop also meets one condition (the placement) under its own binding.
    placed_cold = STATIC | {("inreceptacle", ("apple2", "countertop1"))}
    assert goal_condition_rate(blocks, placed_cold, THINGS) == 0.5
    done = heated | {("inreceptacle", ("apple1", "countertop1"))}
    assert goal_condition_rate(blocks, done, THINGS) == 1.0
    # Hot apple1 and a cold apple2 on the counter: no single apple meets both, so still 0.5.
    split = heated | {("inreceptacle", ("apple2", "countertop1"))}
    assert goal_condition_rate(blocks, split, THINGS) == 0.5


def test_two_objects_must_be_distinct():
    blocks = parse_goal(TWO_GOAL)
    one = STATIC | {("inreceptacle", ("mug1", "shelf1"))}
    assert goal_condition_rate(blocks, one, THINGS) == 0.5  # the same mug cannot count twice
    both = one | {("inreceptacle", ("mug2", "shelf1"))}
    assert goal_condition_rate(blocks, both, THINGS) == 1.0


def test_static_literals_are_required_not_counted():
    blocks = parse_goal(HEAT_GOAL)
    # A hot mug in the right place is not a hot apple: objectType fails, nothing counts.
    wrong = STATIC | {("ishot", ("mug1",)), ("inreceptacle", ("mug1", "countertop1"))}
    assert goal_condition_rate(blocks, wrong, THINGS) == 0.0


def test_parsing_errors_and_names():
    assert normalise("AppleType") == normalise("appletype ") == "appletype"
    assert parse_sexpr("(a (b c))") == [["a", ["b", "c"]]]
    with pytest.raises(ValueError, match="unbalanced"):
        parse_sexpr("(a (b c)")
    with pytest.raises(ValueError, match="no \\(:goal"):
        parse_goal("(define (problem p))")
    with pytest.raises(ValueError, match="unsupported"):
        parse_goal("(:goal (or (a ?x) (b ?x)))")
