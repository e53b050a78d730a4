"""Rule files: their models, how one is loaded, and the catalog of rules in force."""

from worker.rules.catalog import RuleCatalog
from worker.rules.loader import load_rule_file, load_rule_text, rule_json_schema
from worker.rules.models import BirthdayTrigger, Rule, SendAction, Trigger

__all__ = [
    "BirthdayTrigger",
    "Rule",
    "RuleCatalog",
    "SendAction",
    "Trigger",
    "load_rule_file",
    "load_rule_text",
    "rule_json_schema",
]
