"""Text ALFWorld as a gymnasium env (``alfworld/ALFWorld-v0``), fully offline.

Games are ALFWorld's TextWorld PDDL games (``envs/alfworld_data.py`` finds them; never
``alfworld-download``). Each is played the way ``alfworld``'s ``AlfredTWEnv`` plays it: TextWorld's
``PddlEnv`` wrapped in alfworld's ``AlfredDemangler`` and ``AlfredInfos``; we drive one game per env
so that a seed picks the game and an episode replays exactly. The visual THOR variant cannot run
offline (it downloads a Unity binary and needs a display); this is the text env.

## Observation (text; also ``info["text"]``)
::

    Task: heat some apple and put it in countertop.
    Observation: You arrive at sinkbasin 1. On the sinkbasin 1, you see a apple 1, and a bowl 2.
    Previous actions: go to sinkbasin 1
    Admissible actions: go to cabinet 1; go to cabinet 2; ...; take apple 1 from sinkbasin 1

## Actions
A command string (``spaces.Text``); one of the admissible commands to have an effect.

## Rewards and episode end (DESIGN.md section 3; RL4VLM's reward, GTR-Turbo's truncation)
Each step: ``50 * won + goal_condition_rate - (1 if the command is not admissible)``. The rate
(``envs/alfworld_goal.py``) is the share of the goal's conditions that hold now, a level rather than a
change, as in RL4VLM. An inadmissible command changes nothing ("Nothing happens.").
Terminated when won. Truncated with ``truncation_penalty`` (-3) added after ``max_actions`` (40)
commands or ``max_repeats`` (5) identical commands in a row; truncated without penalty at
``max_steps`` (50). Set ``max_actions`` or ``max_repeats`` to 0 to switch that rule off.

## Info
``won``, ``task_type``, ``task``, ``admissible_commands``, ``admissible`` (for the last command),
``goal_condition_rate``, ``feedback``, ``previous_actions``, ``gamefile``, ``text``, and after a step
``outcome`` (ok / won / repeats / max_actions / max_steps) and ``success`` (won).
``reset(options={"game": index_or_path})`` picks a game (an index wraps around the game list, so
evaluation can walk the split with 0, 1, 2, ...); otherwise the seeded RNG picks one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from envs import alfworld_goal
from envs.alfworld_data import split_dir
from envs.views import TEXT_CHARSET

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
NOTHING_HAPPENS = "Nothing happens."
_INSTALL_HINT = (
    "ALFWorld needs the optional `alfworld` extra (alfworld + textworld, about 5 minutes to compile): "
    "run `bash scripts/setup.sh alfworld` or `.venv/bin/pip install -e '.[alfworld]'`."
)


def collect_games(folder: Path, task_types: Sequence[str]) -> list[tuple[str, str]]:
    """(game file, task type) of every playable game in a split folder, sorted by path.

    Same rules as ``AlfredTWEnv.collect_game_files``: a ``traj_data.json`` beside the game names its
    task type; "movable" and "Sliced" trials are skipped.
    """
    unknown = set(task_types) - set(TASK_TYPES)
    if unknown:
        raise ValueError(f"unknown ALFWorld task types {sorted(unknown)}; choose from {', '.join(TASK_TYPES)}")
    games = []
    for game in sorted(folder.glob("*/*/game.tw-pddl")):
        traj = game.parent / "traj_data.json"
        if "movable" in str(game.parent) or "Sliced" in str(game.parent) or not traj.is_file():
            continue
        task_type = json.loads(traj.read_text())["task_type"]
        if task_type in task_types:
            games.append((str(game), task_type))
    return games


class ALFWorldEnv(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        split: str = "train",
        task_types: Sequence[str] = TASK_TYPES,
        data_dir: str | None = None,
        num_games: int = 0,
        max_steps: int = 50,
        max_actions: int = 40,
        max_repeats: int = 5,
        truncation_penalty: float = -3.0,
        render_mode: str | None = None,
    ):
        _textworld()  # fail now, with the install hint, rather than at the first reset
        self.split = split
        self.games = collect_games(split_dir(split, data_dir), tuple(task_types))
        if num_games > 0:
            self.games = self.games[:num_games]
        if not self.games:
            raise ValueError(f"no ALFWorld games of types {list(task_types)} in split {split!r}")
        self.max_steps = max_steps
        self.max_actions = max_actions
        self.max_repeats = max_repeats
        self.truncation_penalty = truncation_penalty
        self.render_mode = render_mode
        self.action_space = spaces.Text(max_length=256, charset=TEXT_CHARSET)
        self.observation_space = spaces.Text(max_length=65536, charset=TEXT_CHARSET)
        self._tw_env = None
        self._loaded_game: str | None = None
        self.game_index = -1

    # ------------------------------------------------------------------ episode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        choice = (options or {}).get("game")
        if choice is None:
            self.game_index = int(self.np_random.integers(len(self.games)))
        elif isinstance(choice, str):
            paths = [path for path, _ in self.games]
            if choice not in paths:
                raise ValueError(f"options['game'] {choice!r} is not a game of this env's split and task types")
            self.game_index = paths.index(choice)
        else:
            self.game_index = int(choice) % len(self.games)
        self._start_game()
        return self.text_view(), self._info()

    def step(self, action):
        command = str(action).strip()
        self.steps += 1
        self.admissible = command in self.admissible_commands
        if self.admissible:
            state, _, _ = self._tw_env.step(command)
            self._observe(state)
        else:
            self.feedback = NOTHING_HAPPENS
        self.repeats = self.repeats + 1 if self.previous_actions and self.previous_actions[-1] == command else 1
        self.previous_actions.append(command)
        reward = 50.0 * self.won + self.goal_condition_rate - (0.0 if self.admissible else 1.0)
        terminated, truncated, outcome = self.won, False, "won" if self.won else "ok"
        if not terminated:
            if self.max_repeats and self.repeats >= self.max_repeats:
                truncated, outcome = True, "repeats"
            elif self.max_actions and self.steps >= self.max_actions:
                truncated, outcome = True, "max_actions"
            if truncated:
                reward += self.truncation_penalty
            elif self.steps >= self.max_steps:
                truncated, outcome = True, "max_steps"
        info = self._info()
        info["outcome"] = outcome
        info["success"] = self.won
        return self.text_view(), reward, terminated, truncated, info

    def _start_game(self) -> None:
        path, self.task_type = self.games[self.game_index]
        if self._loaded_game != path:
            self._tw_env = _make_tw_env()
            self._tw_env.load(path)
            game = json.loads(Path(path).read_text())
            if not game.get("solvable", False):
                raise ValueError(f"{path} is marked unsolvable")
            self._goal = alfworld_goal.parse_goal(game["pddl_problem"])
            self._loaded_game = path
        state = self._tw_env.reset()
        self._things = {(alfworld_goal.normalise(a.name), a.type) for f in state["facts"] for a in f.arguments}
        intro = state.feedback
        match = re.search(r"Your task is to: (.*)", intro)
        self.task = match.group(1).strip() if match else ""
        self.steps, self.repeats = 0, 0
        self.previous_actions: list[str] = []
        self.admissible = True
        self._observe(state)
        # The intro's banner and task line are shown in their own fields.
        self.feedback = intro.split("-= Welcome to TextWorld, ALFRED! =-")[-1].split("Your task is to:")[0].strip()

    def _observe(self, state) -> None:
        self.feedback = state.feedback.strip()
        self.admissible_commands = list(state["admissible_commands"])
        self.won = bool(state["won"])
        facts = [(f.name.lower(), tuple(alfworld_goal.normalise(a.name) for a in f.arguments)) for f in state["facts"]]
        self.goal_condition_rate = alfworld_goal.goal_condition_rate(self._goal, facts, self._things)

    # ------------------------------------------------------------------ views

    def text_view(self) -> str:
        previous = "; ".join(self.previous_actions) or "none"
        return (
            f"Task: {self.task}\nObservation: {self.feedback}\nPrevious actions: {previous}\n"
            f"Admissible actions: {'; '.join(self.admissible_commands)}"
        )

    def render(self):
        return self.text_view()

    def _info(self) -> dict[str, Any]:
        return {
            "won": self.won,
            "task_type": self.task_type,
            "task": self.task,
            "admissible_commands": list(self.admissible_commands),
            "admissible": self.admissible,
            "goal_condition_rate": self.goal_condition_rate,
            "feedback": self.feedback,
            "previous_actions": list(self.previous_actions),
            "gamefile": self.games[self.game_index][0],
            "text": self.text_view(),
        }

    # ------------------------------------------------------------------ pickling

    def __getstate__(self):
        """TextWorld's env does not pickle; keep the game and the commands, replay them on load."""
        state = dict(self.__dict__)
        state["_tw_env"] = None
        state["_loaded_game"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.game_index >= 0:
            done = list(self.previous_actions)
            counters = (self.steps, self.repeats, self.admissible)
            self._start_game()
            for command in done:
                if command in self.admissible_commands:
                    self._observe(self._tw_env.step(command)[0])
            self.previous_actions = done
            self.steps, self.repeats, self.admissible = counters
            if done and not self.admissible:
                self.feedback = NOTHING_HAPPENS


def _textworld():
    try:
        import textworld  # noqa: F401
        import textworld.envs.pddl  # noqa: F401
        from alfworld.agents.environment import alfred_tw_env  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{_INSTALL_HINT} ({error})") from error


def _make_tw_env():
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    from textworld.envs.pddl import PddlEnv

    infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True, extras=["gamefile"])
    return AlfredInfos(AlfredDemangler(PddlEnv(infos)))
