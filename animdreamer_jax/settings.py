"""Settings: config files (ml_collections), command-line overrides, and typed sections.

A config file is a Python file with `get_config() -> ml_collections.ConfigDict`
(big_vision style; its docstring gives the command, runtime and headline
result). Fields are overridden with `--config.a.b=value` (or `--config.a.b
value`); the value is parsed as a Python literal and must match the type of
the field it replaces, so a typo never silently becomes a new field or a
string.

Each config section is declared ONCE, as a frozen dataclass next to the code
that reads it (every field with its meaning beside its default). `to_config`
turns such a dataclass into the ConfigDict a config file edits; `from_config`
turns the edited ConfigDict back into the dataclass, naming any unknown key.
So the defaults a config file starts from and the ones code falls back on are
the same object.
"""

from __future__ import annotations

import ast
import sys
import dataclasses
import importlib.util
import json
import os
import pathlib
import typing
from typing import Any, Sequence

import ml_collections

from animdreamer_jax import files
from animdreamer_jax.errors import UserError

OVERRIDE_PREFIX = "--config."


# ----------------------------------------------------------------------------
# Typed sections <-> ConfigDict.


def to_config(section: Any) -> ml_collections.ConfigDict:
  """A dataclass section (nested dataclasses become subsections) as an unlocked ConfigDict."""
  values = {}
  for field in dataclasses.fields(section):
    value = getattr(section, field.name)
    values[field.name] = to_config(value) if dataclasses.is_dataclass(value) else value
  return ml_collections.ConfigDict(values)


def from_config(cls, config: Any, where: str, ignore_unknown: bool = False) -> Any:
  """Builds dataclass `cls` from a ConfigDict / mapping; keys it lacks keep their defaults.

  Args:
    cls: a dataclass whose fields are plain values or nested dataclasses.
    config: ConfigDict or dict (e.g. a run's saved config.json section).
    where: the section's dotted name, for messages ("config.csd").
    ignore_unknown: skip keys `cls` does not declare (a run folder written by an
      earlier version may hold settings since removed); otherwise they are errors.

  Raises:
    UserError: an unknown key, or a value of the wrong type, named by its key.
  """
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  if not isinstance(config, dict):
    raise UserError(f"{where}: expected a section, got {config!r}")
  types = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in config.items():
    if key not in names:
      if ignore_unknown:
        continue
      raise UserError(f"{where}.{key}: unknown config key")
    kind = types[key]
    if dataclasses.is_dataclass(kind):
      kwargs[key] = from_config(kind, value, f"{where}.{key}", ignore_unknown)
    else:
      kwargs[key] = _check_type(f"{where}.{key}", kind, value)
  return cls(**kwargs)


def _check_type(key: str, kind: Any, value: Any) -> Any:
  """`value` converted to the annotated type (lists -> tuples, ints -> floats)."""
  origin = typing.get_origin(kind)
  if origin is typing.Union:
    options = [a for a in typing.get_args(kind) if a is not type(None)]
    if value is None:
      return None
    return _check_type(key, options[0], value)
  if origin is tuple or kind is tuple:
    if not isinstance(value, (list, tuple)):
      raise UserError(f"{key}: expected a sequence like (1, 2), got {value!r}")
    args = typing.get_args(kind)
    item = args[0] if args else None
    if item is not None and item is not Ellipsis:
      return tuple(_check_type(f"{key}[{i}]", item, v) for i, v in enumerate(value))
    return tuple(value)
  if kind is bool:
    if isinstance(value, bool):
      return value
    raise UserError(f"{key}: expected a bool (true/false), got {value!r}")
  if kind is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    raise UserError(f"{key}: expected an int, got {value!r}")
  if kind is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise UserError(f"{key}: expected a number, got {value!r}")
  if kind is str:
    if isinstance(value, str):
      return value
    raise UserError(f"{key}: expected a string, got {value!r}")
  return value


# ----------------------------------------------------------------------------
# Config files and overrides.


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Imports `path` and returns its `get_config()`, locked (no new keys)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{path}: config file not found")
  module_name = f"_animdreamer_config_{abs(hash(str(path.resolve())))}"
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None or spec.loader is None:
    raise UserError(f"{path}: not a Python config file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A broken config file is bad input, not a crash.
    raise UserError(f"{path}: cannot be loaded: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"{path}: has no get_config() function")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  config.lock()
  return config


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separates `--config.key=value` / `--config.key value` pairs from other args.

  Returns:
    (the other arguments in order, [(dotted key, raw value string), ...]).
  """
  rest, overrides = [], []
  i = 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(OVERRIDE_PREFIX):
      body = arg[len(OVERRIDE_PREFIX):]
      if "=" in body:
        key, value = body.split("=", 1)
      else:
        if i + 1 >= len(argv):
          raise UserError(f"config.{body}: missing value")
        key, value = body, argv[i + 1]
        i += 1
      if not key:
        raise UserError(f"{arg}: empty config key")
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def accept_overrides(parser) -> None:
  """Makes an argparse parser also take `--config.<key>=<value>` options, as `args.config_overrides`.

  argparse cannot declare a family of `--config.*` options, so the wrapped
  `parse_args` separates them first (`split_overrides`).
  """
  plain_parse = parser.parse_args

  def parse_args(args: Sequence[str] | None = None, namespace=None):
    argv = sys.argv[1:] if args is None else list(args)
    rest, overrides = split_overrides(argv)
    parsed = plain_parse(rest, namespace)
    parsed.config_overrides = overrides
    return parsed

  parser.parse_args = parse_args


def _parse_value(text: str) -> Any:
  """Python literal if it parses as one, else the raw string."""
  lowered = text.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("none", "null"):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _coerce(key: str, old: Any, raw: str) -> Any:
  """The raw override text as a value of the type of `old`, or UserError."""
  new = _parse_value(raw)
  if old is None:
    return new
  if isinstance(old, ml_collections.ConfigDict):
    raise UserError(f"config.{key}: is a section; override its fields, e.g. config.{key}.<field>")
  if isinstance(old, str):
    # A quoted literal is unquoted; any other text is taken as written ("none" stays "none").
    return new if isinstance(new, str) else raw
  if isinstance(old, (tuple, list)) and isinstance(new, (int, float)) and not isinstance(new, bool):
    new = (new,)
  if isinstance(old, bool) and new in (0, 1) and not isinstance(new, bool):
    new = bool(new)
  kind = type(old)
  if isinstance(old, (tuple, list)):
    item = type(old[0]) if old else None
    return type(old)(_check_type(f"config.{key}", tuple[item, ...] if item else tuple, new))
  return _check_type(f"config.{key}", kind, new)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """Applies (dotted key, raw value) pairs in place; unknown key -> UserError."""
  for key, raw in overrides:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise UserError(f"config.{'.'.join(parts[:i + 1])}: unknown config key")
      node = node[part]
    leaf = parts[-1]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise UserError(f"config.{key}: unknown config key")
    value = _coerce(key, node[leaf], raw)
    with node.unlocked():
      node[leaf] = value
  return config


def load_config(path: str | os.PathLike,
                overrides: Sequence[tuple[str, str]] | Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads a config file and applies overrides.

  Args:
    path: the config file.
    overrides: (dotted key, raw value) pairs, or `--config.key=value` strings.
  """
  config = load_config_file(path)
  pairs = []
  for item in overrides:
    if isinstance(item, str):
      rest, parsed = split_overrides([item])
      if rest:
        raise UserError(f"{item}: not a --config.<key>=<value> override")
      pairs.extend(parsed)
    else:
      pairs.append(tuple(item))
  return apply_overrides(config, pairs)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """Plain JSON-able nested dict (tuples become lists)."""
  return json.loads(config.to_json())


def save_config(config: ml_collections.ConfigDict, path: str | os.PathLike) -> None:
  """Writes the resolved config as JSON, atomically."""
  text = json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n"
  files.save_text(pathlib.Path(path), text)


def read_config_json(path: str | os.PathLike) -> dict:
  """A saved config.json as a dict (UserError if unreadable)."""
  path = pathlib.Path(path)
  try:
    data = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read the run's config ({e})") from e
  if not isinstance(data, dict):
    raise UserError(f"{path}: not a config (expected a JSON object)")
  return data
