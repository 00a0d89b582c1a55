"""Bounded YAML and JSON: every text we parse (configs, `--set` values, sweep files,
vocabulary files, checkpoint headers and payloads) may come from someone else.

A document nested thousands deep exhausts Python's recursion (RecursionError), and a
YAML alias "billion laughs" expands to more data than memory holds in a few lines.
So YAML aliases are refused outright (no config needs them), nesting is limited to
MAX_DEPTH and the number of nodes to MAX_NODES, duplicate keys are refused (a second
`model:` would silently replace the first), and YAML's non-JSON types (dates, bytes,
sets) are read as plain strings or refused, so every value can be written back as JSON.
Failures raise ParseError; the caller names the file.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from .errors import CharlstmError

MAX_DEPTH = 64
MAX_NODES = 100_000


class ParseError(CharlstmError):
    """A YAML or JSON text that is malformed, or too deep or large to read safely."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts depth and nodes while composing and refuses aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise ParseError("YAML aliases (*name) are not allowed; write the value out")
        self._depth += 1
        self._nodes += 1
        if self._depth > MAX_DEPTH:
            raise ParseError(f"nested more than {MAX_DEPTH} levels deep")
        if self._nodes > MAX_NODES:
            raise ParseError(f"more than {MAX_NODES} values")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let SafeLoader refuse it
                continue
            if duplicate:
                raise ParseError(f"key {key!r} appears twice (line {key_node.start_mark.line + 1})")
        return super().construct_mapping(node, deep)


def _as_text(loader, node):
    return loader.construct_scalar(node)


def _refuse(loader, node):
    raise ParseError(f"YAML type {node.tag.rpartition(':')[2]} is not allowed (line {node.start_mark.line + 1})")


# A date would reach JSON (sweep tables, run.json) as something json.dumps refuses.
_BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", _as_text)
for _tag in ("binary", "set", "omap", "pairs"):
    _BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)


def load_yaml(text: str) -> Any:
    """The one YAML document in `text`, bounded; ParseError saying why not."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except ParseError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ParseError(f"{where}YAML syntax error ({problem})") from None
    except RecursionError:  # the scanner of a pathological text; the depth limit catches the rest
        raise ParseError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ParseError(f"unreadable value ({exc})") from None


def load_json(text: str | bytes) -> Any:
    """The JSON value in `text`, bounded in depth; ParseError saying why not.
    NaN and Infinity, which Python accepts and no other parser does, are refused."""
    def no_constant(name):
        raise ParseError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise ParseError(f"nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if isinstance(exc, ParseError):
            raise
        raise ParseError(f"not valid JSON ({exc})") from None
    check_depth(value)
    return value


def check_depth(value: Any) -> None:
    """ParseError if `value` (lists and dicts) nests deeper than MAX_DEPTH."""
    pending = [(value, 1)]
    while pending:  # iterative: the point is not to recurse
        item, depth = pending.pop()
        if isinstance(item, (list, dict)):
            if depth > MAX_DEPTH:
                raise ParseError(f"nested more than {MAX_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
