"""YAML with line numbers: config errors should name the line a reviewer has to fix.

PyYAML's composer keeps a start mark on every node; this walks the node tree once and records
the line of every mapping key and sequence item by its path, e.g.
("departments", "citymgmt", "receives", 0) -> 14. Duplicate mapping keys, which PyYAML would
silently collapse to the last one, are reported with both lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[Any, ...]


@dataclass
class LinedYaml:
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    duplicates: list[tuple[Path, int, int]] = field(default_factory=list)  # (path, first line, second line)

    def line_of(self, path: Sequence[Any]) -> int:
        """The line of the longest known prefix of `path` (1 for the document itself)."""
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def load_with_lines(text: str) -> LinedYaml:
    """Parse YAML safely; raises yaml.YAMLError (which carries its own line) on bad syntax."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    result = LinedYaml(data=yaml.safe_load(text) if root is not None else None)
    if root is not None:
        _walk(root, (), result)
    return result


def _walk(node: yaml.Node, path: Path, out: LinedYaml) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            here = path + (key,)
            line = key_node.start_mark.line + 1
            if here in out.lines:
                out.duplicates.append((here, out.lines[here], line))
            out.lines[here] = line
            _walk(value_node, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out.lines[path + (index,)] = item.start_mark.line + 1
            _walk(item, path + (index,), out)
