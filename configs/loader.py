"""Load the config: schema defaults <- YAML file <- ``key=value`` overrides, then validate.

Every failure is a ``ConfigError`` whose message names the key and says how to fix it.
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from configs.schema import Config


class ConfigError(ValueError):
    """A bad config file, key, type or value; the message names it."""


# Keys that existed once and do something else now: what to write instead.
RETIRED = {
    "sft.minutes": (
        "sft.minutes was a wall-clock cap that silently shortened SFT on a slow machine; SFT now always runs "
        "sft.steps steps. Remove it, lower sft.steps for a shorter warm start, or set sft.warn_minutes=N "
        "for a warning when it runs long"
    ),
}


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The validated config as the schema's dataclasses."""
    cfg = OmegaConf.structured(Config)
    if path is not None:
        cfg = _merge(cfg, _read_yaml(Path(path)), f"config file {path}")
    if overrides:
        cfg = _merge(cfg, _parse_overrides(overrides), "command-line overrides")
    for key, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not a finite number; give it a finite value")
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error, cfg, "config")) from None
    except ValueError as error:  # a section's __post_init__ check
        raise ConfigError(str(error)) from None


def parse_cli(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, default_config: str | None = None
) -> tuple[argparse.Namespace, Config]:
    """Add ``--config`` and ``key=value`` overrides to a command's parser and load the config.

    A bad config prints ``error: ...`` naming the key and exits with status 2, before anything starts.
    """
    parser.add_argument("--config", default=default_config, help="a YAML file under configs/")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. env.id=gym_cards/EZPoints-v0")
    args = parser.parse_args(argv)
    try:
        return args, load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (configs live in configs/*.yaml)")
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml's own parse errors carry the line number
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a list")
    return loaded


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like key=value, e.g. env.id=gym_cards/EZPoints-v0")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {error}") from None


def _merge(cfg: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error, cfg, source)) from None


def _numbers(node: DictConfig, prefix: str = ""):
    """(dotted key, value) of every float in the config."""
    for key, value in node.items():
        if isinstance(value, DictConfig):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            yield f"{prefix}{key}", value


def _describe(error: OmegaConfBaseException, cfg: DictConfig, source: str) -> str:
    key = getattr(error, "full_key", None) or getattr(error, "key", None) or "?"
    if isinstance(error, ConfigKeyError):
        if str(key) in RETIRED:
            return f"config key '{key}' in {source} is retired: {RETIRED[str(key)]}"
        parent, _, leaf = str(key).rpartition(".")
        section = OmegaConf.select(cfg, parent) if parent else cfg
        valid = sorted(section.keys()) if isinstance(section, DictConfig) else []
        hint = difflib.get_close_matches(leaf, valid, n=1)
        suggestion = f"; did you mean '{parent + '.' if parent else ''}{hint[0]}'?" if hint else "."
        where = f"'{parent}'" if parent else "the top level"
        return f"unknown config key '{key}' in {source}{suggestion} Valid keys in {where}: {', '.join(valid)}"
    message = str(error).splitlines()[0]
    return f"bad value for config key '{key}' in {source}: {message}"
