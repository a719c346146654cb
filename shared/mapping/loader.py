"""Load a mapping file: YAML -> validated `MappingSet`, or an error naming file, line, path and reason."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.errors import ServiceError
from shared.mapping.schema import MappingSet

DEFAULT_MAPPING_FILE = Path(__file__).resolve().parents[2] / "mappings" / "default.yaml"


@dataclass(frozen=True)
class Problem:
    line: int | None  # 1-based
    path: str  # e.g. mappings[3](CUSTOMER).fields[2](name).direction
    message: str


class MappingFileError(ServiceError, ValueError):
    """The mapping file is unusable; start-up must stop and show this."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        lines = [f"{file}:{p.line or '?'}: {p.path or '(file)'}: {p.message}" for p in problems]
        super().__init__(f"invalid mapping file {file}:\n  " + "\n  ".join(lines))


def load_mapping_set(path: str | Path = DEFAULT_MAPPING_FILE) -> MappingSet:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MappingFileError(
            str(path), [Problem(None, "", f"cannot read the file: {exc.strerror}; check MAPPINGS_FILE")]
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A binary or mis-encoded file: name the line of the first bad byte, not just the codec error.
        line = data[: exc.start].count(b"\n") + 1
        raise MappingFileError(
            str(path),
            [
                Problem(
                    line,
                    "",
                    f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                    "save the file as UTF-8 YAML",
                )
            ],
        ) from None
    return parse_mapping_set(text, str(path))


def parse_mapping_set(text: str, source: str = "<string>") -> MappingSet:
    node = _compose(text, source)
    if node is None:
        raise MappingFileError(source, [Problem(1, "", "the file is empty; it needs `mappings:`")])
    loader = yaml.SafeLoader("")
    try:
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    try:
        return MappingSet.model_validate(data)
    except ValidationError as exc:
        raise MappingFileError(source, [_problem(node, data, err) for err in exc.errors()]) from None


def _compose(text: str, source: str) -> yaml.Node | None:
    try:
        # The reader checks for non-printable characters when it is built, so this is in the try too.
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise MappingFileError(source, [Problem(line, "", f"not valid YAML: {exc.problem or exc}")]) from None
    except yaml.reader.ReaderError as exc:
        # Control characters (binary content): PyYAML's error has a character position, no line.
        line = text[: exc.position].count("\n") + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise MappingFileError(
            source,
            [
                Problem(
                    line,
                    "",
                    f"not valid YAML: control character U+{code:04X} is not allowed "
                    "(binary content?); save the file as UTF-8 YAML text",
                )
            ],
        ) from None
    loader.dispose()
    if node is not None:
        _refuse_duplicate_keys(node, source)
    return node


def _refuse_duplicate_keys(node: yaml.Node, source: str) -> None:
    # PyYAML keeps the last of two equal keys silently; in a mapping file that hides a mistake.
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if key.value in seen:
                raise MappingFileError(
                    source,
                    [Problem(key.start_mark.line + 1, str(key.value), "key given twice in the same block")],
                )
            seen.add(key.value)
            _refuse_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, source)


# Keys whose values name a mapping: where a cross-reference error (unknown lookup, repeated name,
# dependency cycle) is reported by the file-level validator without a location of its own.
_NAME_KEYS = {"name", "lookup", "depends_on", "salespeople_mapping"}


def _locate_names(root: yaml.Node, message: str) -> int | None:
    """The line of the mapping name a file-level error is about, so it does not point at line 1."""
    names = set(re.findall(r"'([^']+)'", message))
    if "->" in message:
        names |= {part.strip() for part in message.split(":", 1)[-1].split("->")}
    found: list[tuple[str, int]] = []

    def walk(node: yaml.Node, key: str | None) -> None:
        if isinstance(node, yaml.ScalarNode):
            if key in _NAME_KEYS and node.value in names:
                found.append((key, node.start_mark.line + 1))
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                walk(v, str(k.value))
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, key if key == "depends_on" else None)

    walk(root, None)
    if not found:
        return None
    names_given = [line for key, line in found if key == "name"]
    if "repeated" in message and names_given:
        return names_given[-1]  # the second of two equal names is the one to rename
    references = [line for key, line in found if key != "name"]
    return references[0] if references else found[0][1]


def _problem(root: yaml.Node, data: Any, err: Any) -> Problem:
    """Walk the YAML node tree along pydantic's error location to find the line, and name the path."""
    node: yaml.Node = root
    value = data
    parts: list[str] = []
    for step in err["loc"]:
        if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
            value = value[step] if isinstance(value, list) else None
            name = (
                value.get("name") or value.get("key") or value.get("bc") if isinstance(value, dict) else None
            )
            parts.append(f"[{step}]" + (f"({name})" if name else ""))
        elif isinstance(node, yaml.MappingNode):
            child = next(((k, v) for k, v in node.value if k.value == str(step)), None)
            if child is None:
                continue  # a union tag such as `entity` that is not in the file
            node = child[1]
            value = value.get(str(step)) if isinstance(value, dict) else None
            parts.append(f".{step}" if parts else str(step))
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (misspelt? see docs/mappings.md)"
    if node is root and isinstance(root, yaml.MappingNode):
        line: int | None = _locate_names(root, message) or node.start_mark.line + 1
    elif node is root:
        line = node.start_mark.line + 1
        message = f"{message}; the file must be a mapping with `version`, `settings` and `mappings` keys"
    else:
        line = node.start_mark.line + 1
    return Problem(line, "".join(parts), message)
