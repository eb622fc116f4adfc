"""Typed configuration: one dataclass schema (schema.py), YAML files and key=value overrides (loader.py)."""

from configs.loader import ConfigError, load_config
from configs.schema import Config

__all__ = ["Config", "ConfigError", "load_config"]
