"""``when:`` conditions: sandboxed Jinja expressions over the message context.

Example::

    >>> condition = compile_condition("customer.email_opt_in and customer.locale == 'de'")
    >>> condition({"customer": {"email_opt_in": True, "locale": "de"}})
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

from worker.messages.rendering import make_environment
from worker.messages.template_fields import FieldUse, field_uses

Condition = Callable[[Mapping[str, Any]], bool]

# One sandboxed environment for every condition (same limits as templates).
_ENV = make_environment(templates_dir=Path())


#: What a condition looks like, for people whose condition does not parse.
CONDITION_EXAMPLE = "write e.g. customer.email_opt_in and purchase.total > 100"


class ConditionError(ValueError):
    """The condition does not compile, or fails on this record; the message is a reason."""


@lru_cache(maxsize=256)
def compile_condition(expression: str) -> Condition:
    """Compile once; the result returns the truth of the expression for a context."""
    try:
        compiled = _ENV.compile_expression(expression, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ConditionError(
            f"condition {expression!r} is not valid: {exc.message}; {CONDITION_EXAMPLE}"
        ) from None

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


def condition_uses(expression: str) -> list[FieldUse]:
    """The names and fields a condition reads (``customer.email_opt_in``), in every branch
    (``a if b else c``), for validation; columns count from the expression's first character."""
    source = f"{{{{ {expression} }}}}"
    try:
        ast: nodes.Template = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise ConditionError(f"condition {expression!r} is not valid: {exc.message}") from None
    # The expression was parsed after "{{ ": take those three characters off every column.
    return [
        replace(use, col=max(use.col - 3, 1), name_col=max(use.name_col - 3, 1))
        for use in field_uses(ast, source)
    ]
