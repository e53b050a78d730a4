"""Rules in words, for people who do not read YAML: what fires a rule and when it goes out.

Example::

    >>> from worker.rules.loader import load_rule_file
    >>> describe_trigger(load_rule_file(Path("rules/birthday-greeting.yaml")))  # doctest: +SKIP
    'yearly on the birthday at 09:00 customer time (Feb 29 birthdays: Feb 28 in common years)'
"""

from __future__ import annotations

from datetime import time

from worker.rules.models import (
    AfterTrigger,
    AnniversaryTrigger,
    BirthdayTrigger,
    EventTrigger,
    Rule,
    UnresolvedTrigger,
    format_duration,
)

_FEB29 = {"feb28": "Feb 28", "mar1": "Mar 1"}


def _clock(at: time) -> str:
    return f"{at:%H:%M} customer time"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe_trigger(rule: Rule) -> str:
    """When ``rule`` sends, in one sentence (its quiet hours included)."""
    spec = rule.trigger.spec
    if isinstance(spec, BirthdayTrigger):
        day = "the birthday" if spec.field == "customer.birthday" else spec.field
        words = f"yearly on {day} at {_clock(spec.at)}"
        words += f" (Feb 29 birthdays: {_FEB29[spec.feb29]} in common years)"
    elif isinstance(spec, AnniversaryTrigger):
        if spec.years:
            which = ", ".join(_ordinal(n) for n in spec.years)
            words = f"on the {which} anniversary of {spec.field} at {_clock(spec.at)}"
        else:
            words = f"yearly on the anniversary of {spec.field} at {_clock(spec.at)}"
    elif isinstance(spec, AfterTrigger):
        words = f"once, {format_duration(spec.delay)} after {spec.field}"
        if spec.at is not None:
            words += f", at {_clock(spec.at)}"
    elif isinstance(spec, UnresolvedTrigger):
        words = f"while {spec.resolved} is empty: {format_duration(spec.after)} after {spec.field}"
        if spec.times > 1 and spec.every is not None:
            words += f", then every {format_duration(spec.every)}, at most {spec.times} times"
    else:
        assert isinstance(spec, EventTrigger)
        words = f"as soon as the CRM reports {spec.type}"
    if rule.send_window is not None:
        window = rule.send_window
        words += f"; only between {window.start:%H:%M} and {window.end:%H:%M} customer time"
    return words
