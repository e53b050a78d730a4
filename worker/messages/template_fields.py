"""The data a template or a ``when:`` condition reads, found in its Jinja syntax tree.

Rendering a template for one sample record only visits the branches that record takes: a typo
inside ``{% if customer.vip %}`` stays hidden until a VIP customer gets the message. Reading the
syntax tree instead finds every ``customer.first_name`` (or ``customer["first_name"]``) in every
branch, loop, macro and block, and names the templates it includes, imports or extends, so that
``check`` can follow those too.

Example::

    >>> env = make_environment(Path("templates"))                        # doctest: +SKIP
    >>> source = "{% if customer.vip %}Hi {{ customer.frist_name }}{% endif %}"
    >>> [(u.name, u.field, u.line, u.col) for u in field_uses(env.parse(source), source)]
    [('customer', 'vip', 1, 16), ('customer', 'frist_name', 1, 37)]
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from jinja2 import nodes

#: Names Jinja itself provides inside a template (loops, macros, blocks).
JINJA_NAMES = frozenset({"loop", "caller", "varargs", "kwargs", "super", "self"})


@dataclass(frozen=True, order=True)
class FieldUse:
    """``name.field`` (or ``name`` alone: ``field`` is None) read at ``line``:``col`` (1-based)
    of the template or condition text; ``col`` is where the field is written."""

    line: int
    col: int
    name: str
    field: str | None
    name_col: int = 1  # where the name itself starts (``col`` is the field's, when there is one)


def field_uses(ast: nodes.Template, source: str) -> list[FieldUse]:
    """Every name the template reads from its context (not those it sets itself: loop
    variables, ``{% set %}``, macro parameters, imports; nor those it tests with ``is
    defined``), with the field read from it when there is one, in the order written."""
    bound = _bound_names(ast) | JINJA_NAMES
    guarded = _guarded(ast)
    lines = source.splitlines()
    uses = set()
    for name, field, lineno in _reads(ast, None):
        if name in bound or name in guarded or (name, field) in guarded:
            continue
        name_col, col = _columns(lines, lineno, name, field)
        uses.add(FieldUse(lineno, col, name, field, name_col))
    return sorted(uses)


def referenced_templates(ast: nodes.Template) -> list[tuple[str, int]]:
    """Templates named by ``extends``, ``include``, ``import`` and ``from … import``, with the
    line they are named on; a name computed at render time cannot be followed and is left out."""
    found = []
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        target: nodes.Expr = node.template  # type: ignore[attr-defined]  # all four have it
        if isinstance(target, nodes.Const) and isinstance(target.value, str):
            found.append((target.value, node.lineno))
        elif isinstance(target, (nodes.List, nodes.Tuple)):  # include ['a', 'b']: the first found
            found.extend(
                (item.value, node.lineno)
                for item in target.items
                if isinstance(item, nodes.Const) and isinstance(item.value, str)
            )
    return found


def filter_uses(ast: nodes.Template, source: str) -> list[tuple[int, int, str]]:
    """Every filter the template applies (``| money("EUR")``), as (line, column, name)."""
    lines = source.splitlines()
    found = set()
    for node in ast.find_all(nodes.Filter):
        text = lines[node.lineno - 1] if 0 < node.lineno <= len(lines) else ""
        match = re.search(rf"\|\s*({re.escape(node.name)})\b", text)
        found.add((node.lineno, match.start(1) + 1 if match else 1, node.name))
    return sorted(found)


def _guarded(ast: nodes.Template) -> set[str | tuple[str, str | None]]:
    """What the template tests with ``is defined`` (``company.crm_url is defined``, or a bare
    name): it is written to do without it, so a missing field there is no typo."""
    guarded: set[str | tuple[str, str | None]] = set()
    for test in ast.find_all(nodes.Test):
        if test.name not in ("defined", "undefined"):
            continue
        target = test.node
        if isinstance(target, nodes.Name):
            guarded.add(target.name)
        elif isinstance(target, (nodes.Getattr, nodes.Getitem)) and isinstance(
            target.node, nodes.Name
        ):
            guarded.add((target.node.name, _field_of(target.node, target)))
    return guarded


def _bound_names(ast: nodes.Template) -> set[str]:
    names = {node.name for node in ast.find_all(nodes.Name) if node.ctx in ("store", "param")}
    names |= {node.name for node in ast.find_all(nodes.Macro)}
    names |= {node.target for node in ast.find_all(nodes.Import)}
    for node in ast.find_all(nodes.FromImport):
        names |= {n[1] if isinstance(n, tuple) else n for n in node.names}
    return names


def _reads(node: nodes.Node, parent: nodes.Node | None) -> Iterator[tuple[str, str | None, int]]:
    if isinstance(node, nodes.Name) and node.ctx == "load":
        yield node.name, _field_of(node, parent), node.lineno
        return
    for child in node.iter_child_nodes():
        yield from _reads(child, node)


def _field_of(name: nodes.Name, parent: nodes.Node | None) -> str | None:
    if isinstance(parent, nodes.Getattr) and parent.node is name:
        return parent.attr
    if (
        isinstance(parent, nodes.Getitem)
        and parent.node is name
        and isinstance(parent.arg, nodes.Const)
        and isinstance(parent.arg.value, str)
    ):
        return parent.arg.value
    return None


def _columns(lines: list[str], lineno: int, name: str, field: str | None) -> tuple[int, int]:
    """Where on its line the use is written (Jinja records lines only): the name's first
    character and the field's (the name's again when there is no field); 1 when not found."""
    if not 0 < lineno <= len(lines):
        return 1, 1
    match = re.search(use_pattern(name, field), lines[lineno - 1])
    if not match:
        return 1, 1
    return match.start() + 1, match.start(match.lastindex or 0) + 1


def use_pattern(name: str, field: str | None) -> str:
    """A regular expression for ``name.field`` (or ``name["field"]``, or ``name`` alone) as
    written; its group 1 is the field, or the name when there is no field."""
    if field is not None:
        return rf"(?<![\w.]){re.escape(name)}\s*(?:\.\s*|\[\s*['\"])({re.escape(field)})\b"
    return rf"(?<![\w.])({re.escape(name)})\b"
