"""YAML with bounds: aliases may be used, but not to build a bomb; duplicate keys are an error.

PyYAML shares the object an alias points to, so an alias bomb (a few hundred bytes whose aliases
nest ten levels deep) loads in microseconds and only explodes later, when the configuration is
merged and validated. So the composed node graph is measured before anything is constructed:
its size with every alias expanded (counted once per node, so measuring is linear in the file),
its depth, alias cycles, and repeated keys in one mapping.
"""

from __future__ import annotations

from typing import Any

import yaml

# A configuration that expands past this is not a configuration (the seed's has ~60 values).
MAX_NODES = 100_000
MAX_DEPTH = 64


class YAMLBoundError(ValueError):
    """The document is well-formed YAML but too big, too deep, or repeats a key; the message says which."""


def _expanded_sizes(root: yaml.Node) -> None:
    """Walk the node graph once (iteratively: depth is bounded here, not by the interpreter's stack)."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        line = node.start_mark.line + 1
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise YAMLBoundError(f"aliases expand to more than {MAX_NODES} values at line {line} "
                                     "(an alias bomb?)")
            if height[key] > MAX_DEPTH:
                raise YAMLBoundError(f"nested more than {MAX_DEPTH} levels deep at line {line}")
            continue
        if key in size:
            continue
        if key in on_path:
            raise YAMLBoundError(f"an alias refers to itself at line {line}")
        if isinstance(node, yaml.MappingNode):
            _check_duplicates(node)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_duplicates(node: yaml.MappingNode) -> None:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            raise YAMLBoundError(f"duplicate key {key_node.value!r} at line {key_node.start_mark.line + 1}")
        seen.add(ident)


class _Loader(yaml.SafeLoader):
    """Counts nesting while composing, so a deeply nested file stops at MAX_DEPTH, not at the
    interpreter's recursion limit."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise YAMLBoundError(f"nested more than {MAX_DEPTH} levels deep at line "
                                     f"{self.peek_event().start_mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def safe_load_bounded(text: str) -> Any:
    """`yaml.safe_load`, refusing alias bombs, deep nesting and duplicate keys (YAMLBoundError);
    syntax errors stay yaml.YAMLError."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_sizes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
