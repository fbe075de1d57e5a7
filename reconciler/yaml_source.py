"""YAML loading that remembers where every key came from and refuses duplicate keys.

pyyaml's normal loaders silently keep the last of two equal keys and forget line
numbers; configuration errors need both, so the node tree is walked by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.diagnostics import KeyPath


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
    finally:
        loader.dispose()
    document = YamlDocument(data=None)
    if node is None:
        return document
    try:
        document.data = _construct(loader, node, (), document)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlSyntaxError(
            mark.line + 1 if mark else 1, f"invalid YAML: {exc.problem or exc}"
        ) from exc
    return document


def _construct(
    loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, document: YamlDocument
) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve `<<` merge keys
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be scalars", key_node.start_mark
                )
            key_line = key_node.start_mark.line + 1
            child: KeyPath = (*path, _key_text(key))
            if key in first_line:
                document.duplicates.append((child, key_line, first_line[key]))
                continue
            first_line[key] = key_line
            document.lines[child] = key_line
            result[key] = _construct(loader, value_node, child, document)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item_node in enumerate(node.value):
            child = (*path, index)
            document.lines[child] = item_node.start_mark.line + 1
            items.append(_construct(loader, item_node, child, document))
        return items
    return loader.construct_object(node, deep=True)
