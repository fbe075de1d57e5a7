"""YAML loading that remembers where every key came from and refuses duplicate keys.

pyyaml's normal loaders silently keep the last of two equal keys and forget line
numbers; configuration errors need both, so the node tree is walked by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.config.diagnostics import KeyPath


@dataclass
class YamlDocument:
    data: Any
    # 1-based line of each key (for mappings) or item (for sequences).
    lines: dict[KeyPath, int] = field(default_factory=dict)
    duplicates: list[tuple[KeyPath, int, int]] = field(default_factory=list)

    def line_of(self, path: KeyPath) -> int:
        """Line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1


class YamlSyntaxError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _key_text(key: Any) -> str | int:
    # Keys are strings in channels.yaml; anything else (1, true) is kept printable.
    return key if isinstance(key, str) else str(key)


# Bounds on one document. A real channels.yaml nests about ten levels deep and holds a
# few thousand values; aliases (and ``<<`` merges of aliases) can make a few lines
# expand exponentially, and an alias inside its own anchor loops forever.
MAX_DEPTH = 64
MAX_VALUES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_yaml(text: str) -> YamlDocument:
    """Parse one YAML document, recording key lines and duplicate keys."""
    try:
        # The reader rejects control characters as soon as it is made.
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        code = (
            exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or " ")
        )
        raise YamlSyntaxError(
            line, f"control character U+{code:04X} is not allowed in YAML"
        ) from None
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or str(exc)
        context = f" ({exc.context})" if exc.context else ""
        raise YamlSyntaxError(line, f"invalid YAML: {problem}{context}") from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, f"invalid YAML: {exc}") from exc
    except RecursionError:
        # The composer recurses once per level of nesting.
        raise YamlSyntaxError(
            loader.get_mark().line + 1, "invalid YAML: nested too deeply"
        ) from None
    finally:
        loader.dispose()
    document = YamlDocument(data=None)
    if node is None:
        return document
    try:
        document.data = _Builder(loader, document).build(node, ())
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlSyntaxError(
            mark.line + 1 if mark else 1, f"invalid YAML: {exc.problem or exc}"
        ) from exc
    except RecursionError:
        raise YamlSyntaxError(node.start_mark.line + 1, "invalid YAML: nested too deeply") from None
    return document


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Builder:
    """Builds Python values from the node tree, within :data:`MAX_DEPTH` and :data:`MAX_VALUES`."""

    def __init__(self, loader: yaml.SafeLoader, document: YamlDocument) -> None:
        self.loader = loader
        self.document = document
        self.values = 0
        self.open: set[int] = set()  # collections being built: meeting one again is a loop
        self.merge_sizes: dict[int, int] = {}
        self.merging: set[int] = set()

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise YamlSyntaxError(
                _line(node),
                f"invalid YAML: the document expands to more than {MAX_VALUES} values "
                "(aliases of aliases?)",
            )
        if len(path) > MAX_DEPTH:
            raise YamlSyntaxError(
                _line(node), f"invalid YAML: nested more than {MAX_DEPTH} levels deep"
            )
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return self.scalar(node)
        if id(node) in self.open:
            raise YamlSyntaxError(_line(node), "invalid YAML: an alias refers to its own anchor")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            items = []
            for index, item_node in enumerate(node.value):
                child = (*path, index)
                self.document.lines[child] = _line(item_node)
                items.append(self.build(item_node, child))
            return items
        finally:
            self.open.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[Any, Any]:
        self.merged_size(node)  # before flattening: a merge can loop or blow up
        self.loader.flatten_mapping(node)  # resolve `<<` merge keys
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be scalars", key_node.start_mark
                )
            key = self.scalar(key_node)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be scalars", key_node.start_mark
                )
            key_line = _line(key_node)
            child: KeyPath = (*path, _key_text(key))
            if key in first_line:
                self.document.duplicates.append((child, key_line, first_line[key]))
                continue
            first_line[key] = key_line
            self.document.lines[child] = key_line
            result[key] = self.build(value_node, child)
        return result

    def merged_size(self, node: yaml.MappingNode) -> int:
        """How many entries ``node`` has once its ``<<`` merges are flattened."""
        known = self.merge_sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in self.merging:
            raise YamlSyntaxError(
                _line(node), "invalid YAML: a merge (<<) refers to the mapping holding it"
            )
        self.merging.add(id(node))
        size = 0
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                size += 1
                continue
            merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in merged:
                # Anything but a mapping is refused by flatten_mapping, with its line.
                if isinstance(item, yaml.MappingNode):
                    size += self.merged_size(item)
            if size > MAX_VALUES:
                raise YamlSyntaxError(
                    _line(node),
                    f"invalid YAML: merges (<<) expand this mapping to more than {MAX_VALUES} keys",
                )
        self.merging.discard(id(node))
        self.merge_sizes[id(node)] = size
        return size

    def scalar(self, node: yaml.Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # pyyaml's constructors raise these on values such as 2023-02-30 or !!int x.
            tag = str(node.tag).rsplit(":", 1)[-1]
            detail = f" ({exc})" if isinstance(exc, (ValueError, OverflowError)) else ""
            raise YamlSyntaxError(
                _line(node), f"invalid YAML: {node.value!r} is not a valid {tag}{detail}"
            ) from None
