"""ALFWorld goal-condition rate from a game's PDDL goal and the current facts.

RL4VLM's ALFWorld reward is ``50 * won + goal_condition_rate - 1 if inadmissible``. The THOR env
reports ALFRED's goal-condition success; the text env has no such number, so we compute the same
idea from what the text env does have: the game's PDDL goal and TextWorld's current facts.

Every ALFWorld goal is a conjunction of existential blocks over objects, receptacles, the agent
and locations (``exists``, ``and``, literals, and ``not (= a b)`` for distinct objects). A block's
literals are *static* (what a thing is: ``objectType``, ``receptacleType``, ``heatable`` ...) or
*conditions* the agent brings about (``DYNAMIC_PREDICATES``: ``inReceptacle``, ``isHot``,
``holds`` ...). For each block we look for the binding of its variables that satisfies every
static literal and as many conditions as possible; the rate is the number of such conditions met,
summed over blocks, over the number of conditions. It is 1.0 exactly when the goal holds.
Example: "heat some apple and put it in countertop" has the conditions isHot(apple) and
inReceptacle(apple, countertop): 0.0 at the start, 0.5 after heating, 1.0 when placed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Predicates that actions change; everything else in a goal is a static property of the world.
DYNAMIC_PREDICATES = frozenset(
    p.lower()
    for p in (
        "inReceptacle",
        "holds",
        "atLocation",
        "isHot",
        "isCool",
        "isClean",
        "isToggled",
        "isOn",
        "isSliced",
        "opened",
    )
)

Fact = tuple[str, tuple[str, ...]]  # (predicate, argument names), all normalised


def normalise(name: str) -> str:
    """'AppleType' and TextWorld's demangled 'appletype ' become 'appletype'; 'apple 1' 'apple1'."""
    return "".join(name.split()).lower()


@dataclass(frozen=True)
class Literal:
    predicate: str
    args: tuple[str, ...]  # '?x' variables or normalised constants

    @property
    def dynamic(self) -> bool:
        return self.predicate in DYNAMIC_PREDICATES


@dataclass(frozen=True)
class GoalBlock:
    variables: tuple[tuple[str, str], ...]  # (name, type)
    literals: tuple[Literal, ...]
    distinct: tuple[tuple[str, str], ...]  # variable pairs that must bind to different things

    @property
    def n_conditions(self) -> int:
        return sum(lit.dynamic for lit in self.literals)


# ----------------------------------------------------------------------------- parsing


def parse_sexpr(text: str) -> list:
    """Nested lists of atoms from an S-expression text (PDDL)."""
    tokens = text.replace("(", " ( ").replace(")", " ) ").split()
    stack: list[list] = [[]]
    for token in tokens:
        if token == "(":
            stack.append([])
        elif token == ")":
            if len(stack) == 1:
                raise ValueError("unbalanced ')' in PDDL text")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(token)
    if len(stack) != 1:
        raise ValueError("unbalanced '(' in PDDL text")
    return stack[0]


def parse_goal(pddl_problem: str) -> list[GoalBlock]:
    """The goal of a PDDL problem as existential blocks (one per top-level conjunct)."""
    goal = _find_goal(parse_sexpr(pddl_problem))
    if goal is None:
        raise ValueError("the PDDL problem has no (:goal ...) section")
    conjuncts = goal[1:] if goal and goal[0] == "and" else [goal]
    return [_block(conjunct) for conjunct in conjuncts]


def _find_goal(tree) -> list | None:
    if isinstance(tree, list):
        if tree and tree[0] == ":goal":
            return tree[1]
        for child in tree:
            found = _find_goal(child)
            if found is not None:
                return found
    return None


def _block(expr) -> GoalBlock:
    variables: list[tuple[str, str]] = []
    literals: list[Literal] = []
    distinct: list[tuple[str, str]] = []

    def walk(e) -> None:
        head = e[0]
        if head == "exists":
            variables.extend(_typed_variables(e[1]))
            walk(e[2])
        elif head == "and":
            for child in e[1:]:
                walk(child)
        elif head == "not" and isinstance(e[1], list) and e[1][0] == "=":
            distinct.append((e[1][1], e[1][2]))
        elif head in ("or", "not", "forall", "imply", "when"):
            raise ValueError(f"unsupported goal construct {head!r}; ALFWorld goals use exists/and/literals")
        else:
            args = tuple(a if a.startswith("?") else normalise(a) for a in e[1:])
            literals.append(Literal(head.lower(), args))

    walk(expr)
    return GoalBlock(tuple(variables), tuple(literals), tuple(distinct))


def _typed_variables(spec: list[str]) -> list[tuple[str, str]]:
    """'(?r - receptacle ?o ?p - object)' -> [(?r, receptacle), (?o, object), (?p, object)]."""
    out, pending, i = [], [], 0
    while i < len(spec):
        if spec[i] == "-":
            out.extend((name, spec[i + 1].lower()) for name in pending)
            pending, i = [], i + 2
        else:
            pending.append(spec[i])
            i += 1
    out.extend((name, "object") for name in pending)
    return out


# ----------------------------------------------------------------------------- evaluation


def goal_condition_rate(
    blocks: list[GoalBlock], facts: Iterable[Fact], typed_names: Iterable[tuple[str, str]]
) -> float:
    """Share of the goal's conditions met under the best static-consistent binding per block.

    ``facts``: the current true propositions, normalised. ``typed_names``: (name, type) of every
    thing in the game, the domains the goal's variables range over.
    """
    fact_set = set(facts)
    domains: dict[str, set[str]] = {}
    for name, type_ in typed_names:
        domains.setdefault(type_, set()).add(name)
    total = sum(block.n_conditions for block in blocks)
    if total == 0:
        return 1.0
    met = sum(_best_block_score(block, fact_set, domains) for block in blocks)
    return met / total


def _best_block_score(block: GoalBlock, facts: set[Fact], domains: dict[str, set[str]]) -> int:
    candidates = {name: _candidates(name, type_, block, facts, domains) for name, type_ in block.variables}
    order = sorted((name for name, _ in block.variables), key=lambda n: len(candidates[n]))
    position = {name: k for k, name in enumerate(order)}
    # Check each literal (and distinctness pair) as soon as its last variable is bound.
    checks: list[list[Literal]] = [[] for _ in order]
    for lit in block.literals:
        bound_at = max((position[a] for a in lit.args if a in position), default=0)
        checks[bound_at].append(lit)
    pairs: list[list[tuple[str, str]]] = [[] for _ in order]
    for a, b in block.distinct:
        pairs[max(position[a], position[b])].append((a, b))
    best = 0
    goal = block.n_conditions
    binding: dict[str, str] = {}

    def search(k: int, met: int) -> None:
        nonlocal best
        if best == goal:
            return
        if k == len(order):
            best = max(best, met)
            return
        name = order[k]
        for value in candidates[name]:
            binding[name] = value
            if any(binding[a] == binding[b] for a, b in pairs[k]):
                continue
            gained, consistent = 0, True
            for lit in checks[k]:
                holds = (lit.predicate, tuple(binding.get(a, a) for a in lit.args)) in facts
                if lit.dynamic:
                    gained += holds
                elif not holds:
                    consistent = False
                    break
            if consistent:
                search(k + 1, met + gained)
        binding.pop(name, None)

    if not order:
        best = sum(1 for lit in block.literals if lit.dynamic and (lit.predicate, lit.args) in facts)
    else:
        search(0, 0)
    return best


def _candidates(name: str, type_: str, block: GoalBlock, facts: set[Fact], domains: dict[str, set[str]]) -> list[str]:
    """The values of one variable that pass every static literal mentioning only that variable."""
    unary = [
        lit
        for lit in block.literals
        if not lit.dynamic and name in lit.args and all(a == name or not a.startswith("?") for a in lit.args)
    ]
    values = []
    for value in sorted(domains.get(type_, ())):
        if all((lit.predicate, tuple(value if a == name else a for a in lit.args)) in facts for lit in unary):
            values.append(value)
    return values
