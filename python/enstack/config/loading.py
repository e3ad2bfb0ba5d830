"""Loading a run configuration: YAML files, ``include:``, deep merge, dotted overrides, paths.

``load_config`` composes files (``include:`` and lists of files, deep-merged left
to right), applies dotted overrides, resolves relative paths and validates,
reporting every problem at once in one ``enstack.ConfigError``. The stacking
config (``enstack.stacking.config``) composes its files with the same functions.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import yaml

from enstack._C import ConfigError
from enstack.config.schema import DEMO_DATA, Config

__all__ = ["PathLike", "absolute_path", "deep_merge", "load_config", "load_with_includes", "overrides_tree",
           "resolve_paths"]

PathLike = Union[str, "os.PathLike[str]"]

def load_config(paths: Union[PathLike, Sequence[PathLike]],
                overrides: Optional[Union[Mapping[str, Any], Sequence[str]]] = None) -> Config:
    """Loads, composes and validates YAML config files.

    ``paths`` (one or a list) compose left to right: mappings deep-merge, lists and
    scalars are replaced. A file may ``include:`` others (relative to itself), which
    come first. ``overrides`` (``{"train.epochs": 3}`` or ``["train.epochs=3"]``) go
    last. Relative paths inside a file resolve against that top-level file's
    directory; relative paths in overrides against the current directory.
    """
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not files:
        raise ConfigError("load_config needs at least one config file, got an empty list.")
    merged: Dict[str, Any] = {}
    for path in files:
        top = Path(os.path.expanduser(os.fspath(path)))
        tree = load_with_includes(top, ())
        merged = deep_merge(merged, resolve_paths(tree, top.absolute().parent))
    if overrides:
        merged = deep_merge(merged, overrides_tree(overrides))
    return Config.from_dict(merged, source=", ".join(os.fspath(p) for p in files))


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (YAML would silently keep the last)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: Dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist (looked at '{path.absolute()}'); "
                          "check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file '{path}': {e}.") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {_yaml_error(e)}. "
                          "Fix the syntax at that line.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (run, model, data, "
                          f"train), not a {type(data).__name__}.")
    return data


def _yaml_error(e: yaml.YAMLError) -> str:
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem is None or mark is None:
        return str(e)
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None:
        text += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
    return text


def load_with_includes(path: Path, chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """The mapping of one YAML file with its ``include:`` files (relative to it) merged in first.

    ``chain`` holds the files including this one, to report include cycles.
    """
    key = path.absolute()
    if key in chain:
        cycle = " -> ".join(str(p) for p in (*chain, key))
        raise ConfigError(f"include cycle: {cycle}. Remove one of these include: entries.")
    data = _read_yaml(path)
    includes = data.pop("include", None)
    if includes is None:
        return data
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"'{path}': include must be a file name or a list of file names, got {includes!r}.")
    merged: Dict[str, Any] = {}
    for name in includes:
        target = key.parent / os.path.expanduser(name)
        if not target.exists():
            raise ConfigError(f"'{path}' includes '{name}', which does not exist (looked at '{target}').")
        merged = deep_merge(merged, load_with_includes(target, (*chain, key)))
    return deep_merge(merged, data)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, anything else in ``top`` replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def overrides_tree(overrides: Union[Mapping[str, Any], Sequence[str]]) -> Dict[str, Any]:
    """Dotted overrides as a nested mapping, with paths resolved against the current directory."""
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(_parse_override, overrides)
    tree: Dict[str, Any] = {}
    for dotted, value in pairs:
        node = tree
        *parents, leaf = str(dotted).split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}' goes inside '{part}', which an earlier override set "
                                  "to a value.")
        if isinstance(value, Mapping):
            value = deep_merge(node.get(leaf) if isinstance(node.get(leaf), dict) else {}, copy.deepcopy(value))
        node[leaf] = value
    return resolve_paths(tree, Path.cwd())


def _parse_override(text: str) -> Tuple[str, Any]:
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=3).")
    key, _, raw = text.partition("=")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None  # noqa: S506
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not a YAML scalar or list: {_yaml_error(e)}.") from None
    return key.strip(), value


# (section, key) pairs holding file-system paths; name_or_path only when the path exists.
_PATH_KEYS = (("run", "output_dir"), ("run", "mirror_dir"), ("data", "train"), ("data", "validation"),
              ("data", "test"))


def resolve_paths(tree: Dict[str, Any], base: Path) -> Dict[str, Any]:
    """A copy of ``tree`` with relative path values made absolute against ``base``."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for section, key in _PATH_KEYS:
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, (str, os.PathLike)) and value and not (section == "data" and value == DEMO_DATA):
            out[section][key] = absolute_path(value, base)
    model = out.get("model")
    if isinstance(model, dict):
        name = model.get("name_or_path")
        if isinstance(name, (str, os.PathLike)) and name:
            local = absolute_path(name, base)
            model["name_or_path"] = local if os.path.exists(local) else os.path.expanduser(name)
        tokenizer = model.get("tokenizer")
        if isinstance(tokenizer, dict) and isinstance(tokenizer.get("path"), (str, os.PathLike)) and tokenizer["path"]:
            model["tokenizer"] = {**tokenizer, "path": absolute_path(tokenizer["path"], base)}
    return out


def absolute_path(value: PathLike, base: Path) -> str:
    """``value`` (``~`` expanded) made absolute against ``base``, normalised but not resolved."""
    # normpath, not resolve(): keep symlinked mounts (Drive) as the user wrote them.
    return os.path.normpath(os.path.join(base, os.path.expanduser(os.fspath(value))))
