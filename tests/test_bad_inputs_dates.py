"""Dates from ../shared/BAD_INPUTS.md, end to end: what the SMTP server receives.

A scheduler that was down catches up within the rule's grace only; an edited birthday never
yields a second mail that year; garbage dates are skipped with their reason (no mass send on
Jan 1). The pure date arithmetic (Feb 29, DST, far-apart zones) is in tests/test_triggers.py.
"""

from __future__ import annotations

import logging

import pytest

from tests.conftest import REPO
from tests.test_headers import write_crm
from worker.localtime import parse_instant


@pytest.fixture
def world(make_runtime, make_settings, smtp_server, tmp_path):
    """A runtime over ``customers`` with the shipped birthday rule at ``grace``."""

    def build(customers: list[dict[str, str]], grace: str = "1d"):
        rules = tmp_path / "rules"
        rules.mkdir(exist_ok=True)
        text = (REPO / "rules" / "birthday-greeting.yaml").read_text(encoding="utf-8")
        assert "grace: 1d " in text
        (rules / "birthday-greeting.yaml").write_text(
            text.replace("grace: 1d ", f"grace: {grace} "), encoding="utf-8"
        )
        crm = write_crm(tmp_path / "crm", customers)
        return make_runtime(
            make_settings(
                CRM_SOURCE=str(crm),
                CRM_RULES_DIR=str(rules),
                CRM_SMTP_HOST=smtp_server.host,
                CRM_SMTP_PORT=str(smtp_server.port),
                CRM_SMTP_SECURITY="none",
            )
        )

    return build


def born(customer_id: str, birthday: str) -> dict[str, str]:
    return {"id": customer_id, "email": f"c{customer_id}@example.com", "birthday": birthday}


#: Birthdays at 09:00 UTC on Mar 11 … Mar 14; the scheduler comes back on Mar 14 at 10:00 UTC
#: after three days down.
DOWN = [born("11", "1990-03-11"), born("12", "1990-03-12"), born("13", "1990-03-13")]
BACK = parse_instant("2026-03-14T10:00:00Z")


@pytest.mark.parametrize(
    ("grace", "expected"),
    [
        ("1d", ["c14@example.com"]),  # Mar 13 09:00 is 25 hours late: too late for 1d
        ("2d", ["c13@example.com", "c14@example.com"]),
        ("3d", ["c12@example.com", "c13@example.com", "c14@example.com"]),
    ],
)
def test_scheduler_down_three_days_catches_up_within_grace_only(
    world, smtp_server, grace, expected
):
    runtime = world([*DOWN, born("14", "1990-03-14")], grace=grace)
    summary = runtime.run_once(BACK)
    assert summary.states == {"sent": len(expected)}
    assert sorted(r.recipients[0] for r in smtp_server.received) == expected
    # The next passes (the same instant, and an hour later) queue nothing again.
    for later in (BACK, parse_instant("2026-03-14T11:00:00Z")):
        report = runtime.scheduler.run_pass(later)
        assert report.queued == [] and report.already_claimed == len(expected)


def test_birthday_edited_after_the_mail_went_out_gets_no_second_mail(world, smtp_server, tmp_path):
    runtime = world([born("7", "1990-03-14")])
    assert runtime.run_once(BACK).states == {"sent": 1}
    # The CRM corrects the birthday to Mar 20; on Mar 20 nothing goes out again this year.
    customers = tmp_path / "crm" / "customers.csv"
    text = customers.read_text(encoding="utf-8")
    customers.write_text(text.replace("1990-03-14", "1990-03-20"), encoding="utf-8")
    report = runtime.scheduler.run_pass(parse_instant("2026-03-20T10:00:00Z"))
    assert report.queued == [] and report.already_claimed == 1
    # Next year the corrected date counts.
    runtime.run_once(parse_instant("2027-03-20T10:00:00Z"))
    assert [r.recipients for r in smtp_server.received] == [["c7@example.com"]] * 2


def test_garbage_birthdays_are_skipped_with_their_reason_not_sent_on_jan_1(world, smtp_server):
    runtime = world(
        [
            born("1", "0000-00-00"),
            born("2", "1990-02-30"),
            born("3", "2031-01-01"),  # in the future
            born("4", ""),
            born("5", "01/01/1990"),
            born("6", "1990-01-01"),  # the one real Jan 1 birthday
        ]
    )
    summary = runtime.run_once(parse_instant("2026-01-01T10:00:00Z"))
    assert [r.recipients for r in smtp_server.received] == [["c6@example.com"]]
    skipped = summary.report.skipped
    assert sum(n for reason, n in skipped.items() if reason.startswith("birthday-greeting")) >= 4
    reasons = " ".join(skipped)
    assert "future" in reasons and "no birthday" in reasons and "not usable" in reasons


def test_an_unknown_time_zone_is_logged_once_and_explained(make_runtime, make_settings, tmp_path):
    zone = "Mars/Tharsis_Test"  # a name no other test uses: the warning is once per process
    crm = write_crm(
        tmp_path / "crm",
        [
            {"id": "1", "email": "a@example.com", "first_name": "A", "timezone": zone},
            {"id": "2", "email": "b@example.com", "first_name": "B", "timezone": zone},
        ],
    )
    runtime = make_runtime(make_settings(CRM_SOURCE=str(crm), CRM_TIMEZONE="Europe/Berlin"))
    logger = logging.getLogger("worker.sources.schema")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        planned = runtime.scheduler.run_pass(parse_instant("2026-03-14T10:00:00Z"))
    finally:
        logger.removeHandler(handler)
    # Both customers get the default zone (09:00 in Berlin is 08:00 UTC) …
    assert sorted(planned.queued) == [
        "birthday-greeting:customer:1:2026/email",
        "birthday-greeting:customer:2:2026/email",
    ]
    assert runtime.ledger.get("birthday-greeting:customer:1:2026/email")["due_at"].startswith(
        str(int(parse_instant("2026-03-14T08:00:00Z").timestamp()))
    )
    # … and the operator hears of the bad value once, not once per row.
    warnings = [r.getMessage() for r in records if zone in r.getMessage()]
    assert len(warnings) == 1 and "CRM_TIMEZONE" in warnings[0]
    explainer = runtime.explainer
    assert explainer.data_notes("1") == [
        f"timezone {zone!r} is not usable (unknown time zone; CRM_TIMEZONE is used)"
    ]
