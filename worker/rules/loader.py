"""Reading one rule file: YAML 1.2 with positions, then the models, then friendly problems.

The YAML is composed into nodes (never constructed into Python objects by the YAML library), and
turned into plain data here, so that:

* ``yes``/``no``/``on`` stay text, ``9:30`` stays ``"9:30"``, ``0123`` and ``1.10`` keep their
  digits (YAML 1.2 plus our own rule: a number whose text would change is kept as text);
* a duplicate key is an error that names both lines;
* ``!!python/...`` and every other non-standard tag is refused;
* each key and value keeps its line and column, so a pydantic error points at the place;
* a file nested too deeply or holding too many values is refused while it is being read (the
  YAML composer recurses once per level and the scanner slows down quadratically with depth:
  600 levels of ``[`` crashed every pass with a RecursionError).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent, NodeEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from worker.constants import MAX_RULE_DEPTH, MAX_RULE_FILE_BYTES, MAX_RULE_NODES
from worker.errors import Problem, RuleError
from worker.rules.models import Rule
from worker.rules.yaml_errors import explain

Loc = tuple[str | int, ...]
Position = tuple[int, int]

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null", "timestamp")}


class _Positions:
    """Line/column (1-based) of every key and value, addressed by its path in the data."""

    def __init__(self) -> None:
        self.keys: dict[Loc, Position] = {}
        self.values: dict[Loc, Position] = {}

    def nearest(self, loc: Loc, *, prefer_key: bool) -> Position:
        """The position of ``loc``, or of its closest ancestor that has one."""
        for end in range(len(loc), -1, -1):
            prefix = loc[:end]
            table = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            for positions in table:
                if prefix in positions:
                    return positions[prefix]
        return (1, 1)


def _mark(node: Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Converter:
    """Turns a composed YAML node tree into plain dict/list/str/int/bool/None."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.positions = _Positions()
        self.nodes = 0

    def fail(self, node: Node, message: str) -> RuleError:
        line, col = _mark(node)
        return RuleError([Problem(self.path, line, col, message)])

    def convert(self, node: Node, loc: Loc) -> Any:
        self.nodes += 1
        if self.nodes > MAX_RULE_NODES:
            raise self.fail(node, f"more than {MAX_RULE_NODES} values (aliases expanded)")
        self.positions.values.setdefault(loc, _mark(node))
        tag = str(node.tag)
        if isinstance(node, MappingNode):
            if tag != f"{_TAG}map":
                raise self.fail(node, f"tag {tag} is not allowed in a rule file; remove it")
            return self._mapping(node, loc)
        if isinstance(node, SequenceNode):
            if tag != f"{_TAG}seq":
                raise self.fail(node, f"tag {tag} is not allowed in a rule file; remove it")
            return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        if tag not in _PLAIN_TAGS:
            raise self.fail(node, f"tag {tag} is not allowed in a rule file; remove it")
        return _scalar(node, tag)

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, MappingNode) and node.flow_style:
                # `when: {{ x }}` reads as a mapping inside a mapping, keyed by a mapping.
                raise self.fail(
                    node,
                    '{{ ... }} must be quoted: "{{ ... }}"; a when: condition needs no braces '
                    "at all (when: customer.email_opt_in)",
                )
            if not isinstance(key_node, ScalarNode):
                raise self.fail(
                    key_node,
                    "a key must be a plain word, not a list or mapping"
                    ' (a {{ ... }} expression must be quoted: "{{ ... }}")',
                )
            key = str(key_node.value)
            if key == "<<":
                raise self.fail(key_node, "merge keys (<<) are not supported; write the keys out")
            if key in first_seen:
                first_line = _mark(first_seen[key])[0]
                raise self.fail(
                    key_node,
                    f"duplicate key {key!r} (first on line {first_line}); keep only one",
                )
            first_seen[key] = key_node
            self.positions.keys[(*loc, key)] = _mark(key_node)
            result[key] = self.convert(value_node, (*loc, key))
        return result


def _scalar(node: ScalarNode, tag: str) -> Any:
    text: str = node.value
    if node.style is not None:  # quoted or block scalar: always text
        return text
    if tag == f"{_TAG}null":
        return None
    if tag == f"{_TAG}bool":
        return text.lower() == "true"
    if tag == f"{_TAG}int":
        number = int(text, 0) if text.lower().startswith(("0x", "0o")) else int(text)
        # 0123 would lose its leading zero: keep what the person wrote.
        return number if str(number) == text.lstrip("+") else text
    # Floats (1.10 would become 1.1) and timestamps stay exactly as written.
    return text


def _check_size(yaml: YAML, text: str, path: Path) -> None:
    """Refuse a document nested deeper than MAX_RULE_DEPTH or with more than MAX_RULE_NODES
    values, from the parser's events, before anything recursive or slow runs on it."""
    depth = 0
    nodes = 0
    for event in yaml.parse(text):
        if isinstance(event, CollectionEndEvent):
            depth -= 1
            continue
        if not isinstance(event, NodeEvent):
            continue
        nodes += 1
        depth += isinstance(event, CollectionStartEvent)
        if depth > MAX_RULE_DEPTH or nodes > MAX_RULE_NODES:
            mark = event.start_mark
            what = (
                f"nested more than {MAX_RULE_DEPTH} levels deep"
                if depth > MAX_RULE_DEPTH
                else f"more than {MAX_RULE_NODES} values"
            )
            message = f"{what}; a rule needs only a few levels and values"
            raise RuleError([Problem(path, mark.line + 1, mark.column + 1, message)])


def parse_yaml(text: str, path: Path) -> tuple[Any, _Positions]:
    """Parse one YAML document into plain data plus positions; errors carry file:line:col."""
    text = text.removeprefix("\ufeff")
    yaml = YAML(typ="rt")
    try:
        _check_size(yaml, text, path)
        node = yaml.compose(text)
    except MarkedYAMLError as exc:
        line, col, message = explain(
            exc.problem,
            exc.context,
            _position(exc.problem_mark),
            _position(exc.context_mark),
            text.splitlines(),
        )
        raise RuleError([Problem(path, line, col, message)]) from None
    if node is None:
        raise RuleError([Problem(path, 1, 1, "the file is empty; a rule needs id, trigger, send")])
    converter = _Converter(path)
    return converter.convert(node, ()), converter.positions


def _position(mark: Any) -> Position | None:
    return (mark.line + 1, mark.column + 1) if mark is not None else None


def load_rule_text(text: str, path: Path) -> Rule:
    """Validate the text of one rule file; raise :class:`RuleError` with every problem found."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RULE_FILE_BYTES:
        raise RuleError(
            [Problem(path, 1, 1, f"file over {MAX_RULE_FILE_BYTES} bytes; one rule a file")]
        )
    if "\0" in text:
        raise RuleError([Problem(path, 1, 1, "the file contains NUL bytes; save it as UTF-8 text")])
    data, positions = parse_yaml(text, path)
    if not isinstance(data, dict):
        raise RuleError(
            [Problem(path, 1, 1, "a rule file must be a mapping with id, trigger and send")]
        )
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise RuleError(_problems(exc, positions, path)) from None


def load_rule_file(path: Path) -> Rule:
    """Read and validate one rule file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuleError([Problem(path, 0, 0, f"cannot read: {exc.strerror}")]) from None
    if len(raw) > MAX_RULE_FILE_BYTES:
        raise RuleError(
            [Problem(path, 1, 1, f"file over {MAX_RULE_FILE_BYTES} bytes; one rule a file")]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleError(
            [Problem(path, 1, 1, f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")]
        ) from None
    return load_rule_text(text, path)


def _problems(exc: ValidationError, positions: _Positions, path: Path) -> list[Problem]:
    errors = exc.errors()
    # A misspelt required key is one mistake, not two: "unknown key 'feild'; did you mean
    # 'field'?" says it all, so "field: required key is missing" is left out.
    meant = {
        (*_data_loc(e["loc"])[:-1], guess)
        for e in errors
        if e["type"] == "extra_forbidden"
        for guess in _guesses(_data_loc(e["loc"]))
    }
    problems = []
    for error in errors:
        loc = _data_loc(error["loc"])
        if error["type"] == "missing" and loc in meant:
            continue
        line, col = positions.nearest(loc, prefer_key=error["type"] == "extra_forbidden")
        problems.append(Problem(path, line, col, _message(error, loc)))
    return problems


def _data_loc(loc: tuple[int | str, ...]) -> Loc:
    # pydantic adds the tag of a tagged union / function validator to loc; drop what is not data.
    return tuple(p for p in loc if isinstance(p, int) or not p.startswith("function-"))


def _guesses(loc: Loc) -> list[str]:
    """The allowed key an unknown key at ``loc`` was probably meant to be (at most one)."""
    return difflib.get_close_matches(str(loc[-1]), _allowed_keys(loc[:-1]), n=1, cutoff=0.6)


def _message(error: ErrorDetails, loc: Loc) -> str:
    where = ".".join(str(p) for p in loc) or "rule"
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        guess = _guesses(loc)
        allowed = ", ".join(_allowed_keys(loc[:-1]))
        hint = f"; did you mean {guess[0]!r}?" if guess else f"; allowed here: {allowed}"
        return f"unknown key {key!r}{hint}"
    if kind == "missing":
        return f"{where}: required key is missing"
    value = error.get("input")
    if kind == "string_type":
        return f"{where}: expected text, got {value!r}; put it in quotes"
    if kind == "bool_type":
        return f"{where}: expected true or false, got {value!r}"
    if kind in ("int_type", "int_parsing"):
        return f"{where}: expected a whole number, got {value!r}"
    if kind == "list_type":
        return f"{where}: expected a list like [1, 2], got {value!r}"
    if kind in ("model_type", "dict_type"):
        return f"{where}: expected keys indented below it, got {value!r}"
    if kind == "too_short":
        return f"{where}: must not be empty"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        guess = difflib.get_close_matches(str(value), _literal_options(expected), n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        return f"{where}: {value!r} is not one of {expected}{hint}"
    if kind in ("greater_than_equal", "less_than_equal"):
        ctx = error.get("ctx", {})
        if kind == "greater_than_equal":
            return f"{where}: {value!r} is too small; write at least {ctx.get('ge')}"
        return f"{where}: {value!r} is too large; write at most {ctx.get('le')}"
    if kind == "string_pattern_mismatch":
        return f"{where}: {value!r} is not valid here ({_pattern_hint(loc)})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"


def _literal_options(expected: str) -> list[str]:
    return [part.strip(" '\"") for part in expected.replace(" or ", ",").split(",") if part.strip()]


def _pattern_hint(loc: Loc) -> str:
    name = str(loc[-1]) if loc else ""
    if name in ("field", "to", "resolved"):
        return "write entity.field, like customer.email"
    if name == "type":
        return "write entity.what, like purchase.created"
    return "use lower-case letters, digits, - and _"


def _allowed_keys(loc: Loc) -> list[str]:
    """The keys a model accepts at ``loc`` (for "did you mean")."""
    model: type[BaseModel] | None = Rule
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(part)
        model = _model_in(field.annotation) if field else None
    return sorted(f.alias or name for name, f in model.model_fields.items()) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None


def rule_json_schema() -> Mapping[str, Any]:
    """JSON Schema (draft-07 compatible) for rule files, for editors' autocompletion."""
    schema = Rule.model_json_schema()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema
