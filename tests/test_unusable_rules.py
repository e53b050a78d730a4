"""A rule whose template folder is missing is left out of the pass, not claimed and failed.

``check`` reports the problem; meanwhile the scheduler must not claim occurrences that every
worker would fail, so that fixing the template lets the next pass (within grace) send them.
"""

from __future__ import annotations

import logging
import shutil

import pytest

from tests.conftest import REPO
from worker.localtime import parse_instant

NOW = parse_instant("2026-03-14T10:00:00Z")


@pytest.mark.parametrize("pass_name", ["run_pass", "run_planned_pass"])
def test_a_rule_with_a_missing_template_is_not_run_until_fixed(
    make_runtime, make_settings, tmp_path, caplog, pass_name
):
    """Both passes: a full read, and the due-index (whose entries of the rule left out are
    kept for the pass after the fix)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    good = (REPO / "rules" / "birthday-greeting.yaml").read_text(encoding="utf-8")
    (rules / "birthday-greeting.yaml").write_text(good, encoding="utf-8")
    broken = good.replace("id: birthday-greeting", "id: birthday-copy").replace(
        "template: birthday", "template: birthdya"
    )
    (rules / "birthday-copy.yaml").write_text(broken, encoding="utf-8")
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    runtime = make_runtime(
        make_settings(CRM_RULES_DIR=str(rules), CRM_TEMPLATES_DIR=str(templates))
    )

    with caplog.at_level(logging.ERROR, logger="worker.planning.scheduler"):
        report = getattr(runtime.scheduler, pass_name)(NOW)
    greetings = [k for k in report.queued if k.startswith("birthday-greeting:")]
    assert greetings, "the other rule keeps running"
    assert not [k for k in report.queued if k.startswith("birthday-copy:")]
    copies = [k.replace("birthday-greeting:", "birthday-copy:", 1) for k in greetings]
    assert set(runtime.ledger.states(copies).values()) == {""}  # nothing claimed
    assert "rule birthday-copy is not run: template 'birthdya' has no en/ folder" in caplog.text
    # Logged once, not at every pass while nobody has fixed it yet.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="worker.planning.scheduler"):
        getattr(runtime.scheduler, pass_name)(parse_instant("2026-03-14T10:01:00Z"))
    assert "birthday-copy" not in caplog.text

    # The template appears (a sales manager renamed the folder): the next pass sends them.
    shutil.copytree(templates / "birthday", templates / "birthdya")
    later = getattr(runtime.scheduler, pass_name)(parse_instant("2026-03-14T10:05:00Z"))
    assert sorted(k for k in later.queued if k.startswith("birthday-copy:")) == sorted(copies)
    assert set(runtime.ledger.states(copies).values()) == {"queued"}
