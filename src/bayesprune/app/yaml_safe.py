"""Strict YAML for run configs: no aliases or anchors, no duplicate keys, `1e-3` a number.

PyYAML's SafeLoader still expands aliases, so a 1 KB "billion laughs" file grows
without bound; it keeps the last of two equal keys, so a config silently trains
with the other value; and it reads `1e-3` (no dot) as a string. A run config needs
none of these features, so `StrictLoader` refuses the first two with one clear
error and reads every YAML 1.2 float as a float.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node

__all__ = ["StrictLoader", "YamlRefused", "load_strict"]


class YamlRefused(yaml.YAMLError):
    """A YAML feature a run config may not use (an alias, an anchor, a duplicate key)."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, anchors or duplicate keys; `1e-3` resolves to a float."""

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise YamlRefused(
                f"YAML aliases (*{event.anchor}) are not allowed in a run config "
                f"(line {event.start_mark.line + 1}); write the value out in full"
            )
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None:
            raise YamlRefused(
                f"YAML anchors (&{event.anchor}) are not allowed in a run config "
                f"(line {event.start_mark.line + 1}); write the value out in full"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    raise YamlRefused(
                        f"duplicate key {key!r} in the config (lines {first} and {line}); "
                        "keep one of them"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: `1e-3` and `1E5` are numbers (PyYAML, a YAML 1.1 reader, needs a dot)
StrictLoader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_strict(text: str) -> Any:
    """Parse `text` with `StrictLoader`; any refusal is a `yaml.YAMLError`."""
    return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: no tags run code
