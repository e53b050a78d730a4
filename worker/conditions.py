"""``when:`` conditions: sandboxed Jinja expressions over the message context.

Example::

    >>> condition = compile_condition("customer.email_opt_in and customer.locale == 'de'")
    >>> condition({"customer": {"email_opt_in": True, "locale": "de"}})
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

from worker.rendering import make_environment

Condition = Callable[[Mapping[str, Any]], bool]

# One sandboxed environment for every condition (same limits as templates).
_ENV = make_environment(templates_dir=Path())


class ConditionError(ValueError):
    """The condition does not compile, or fails on this record; the message is a reason."""


@lru_cache(maxsize=256)
def compile_condition(expression: str) -> Condition:
    """Compile once; the result returns the truth of the expression for a context."""
    try:
        compiled = _ENV.compile_expression(expression, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ConditionError(f"condition {expression!r} is not valid: {exc.message}") from None

    def check(context: Mapping[str, Any]) -> bool:
        try:
            return bool(compiled(**context))
        except UndefinedError as exc:
            raise ConditionError(f"condition {expression!r}: {exc.message}") from None
        except SecurityError as exc:
            raise ConditionError(
                f"condition {expression!r} refused by the sandbox: {exc}"
            ) from None
        except Exception as exc:  # a bad comparison on dirty data skips this record only
            raise ConditionError(f"condition {expression!r}: {type(exc).__name__}: {exc}") from None

    return check


def condition_names(expression: str) -> set[str]:
    """Top-level names a condition uses (``customer``, ``purchase`` …), for validation."""
    try:
        ast: nodes.Template = _ENV.parse(f"{{{{ {expression} }}}}")
    except TemplateSyntaxError as exc:
        raise ConditionError(f"condition {expression!r} is not valid: {exc.message}") from None
    return set(meta.find_undeclared_variables(ast))


def condition_fields(expression: str) -> set[tuple[str, str]]:
    """``(entity, field)`` pairs a condition reads (``customer.email_opt_in``), for validation."""
    try:
        ast: nodes.Template = _ENV.parse(f"{{{{ {expression} }}}}")
    except TemplateSyntaxError as exc:
        raise ConditionError(f"condition {expression!r} is not valid: {exc.message}") from None
    return {
        (node.node.name, node.attr)
        for node in ast.find_all(nodes.Getattr)
        if isinstance(node.node, nodes.Name)
    }
