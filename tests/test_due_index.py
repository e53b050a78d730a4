"""The scheduler's passes through the due-index (real Redis, the demo CRM as CSV files):
they claim what a full read claims, a rewritten CSV file sends them back to a full pass, a CRM
event re-plans its record, and a mapping's change column is checked like every other key."""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from worker.constants import DIRTY_RECORDS_KEY
from worker.errors import SourceError
from worker.localtime import parse_instant
from worker.planning.events import record_event
from worker.planning.plan import PlannedDelivery, plan
from worker.sources.mapping import load_mapping

NOW = parse_instant("2026-03-14T10:00:00Z")


def _crm(tmp_path: Path) -> Path:
    folder = tmp_path / "crm"
    shutil.copytree(REPO / "examples" / "crm", folder)
    return folder


def test_planned_passes_claim_what_a_full_read_finds_due(
    make_runtime: Any, make_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = make_runtime(make_settings(CRM_SOURCE=str(_crm(tmp_path))))
    runtime.catalog.refresh()
    caplog.set_level(logging.INFO, logger="worker.planning.ahead")
    for minutes in (0, 30, 90, 24 * 60):
        now = NOW + timedelta(minutes=minutes)
        due = {
            item.key
            for item in plan(
                runtime.catalog,
                runtime.source,
                now,
                default_zone=runtime.default_zone,
                company=runtime.settings.company,
            )
            if isinstance(item, PlannedDelivery)
        }
        runtime.scheduler.run_planned_pass(now)
        states = runtime.ledger.states(due)
        assert "" not in states.values(), (now, [k for k, s in states.items() if not s])
    assert due, "the demo CRM has deliveries due on these days"
    # One full pass at start; the day after is within the 36 h horizon: no other.
    assert caplog.text.count("planned ahead to") == 1
    assert runtime.scheduler.ahead.index.size() > 0


def test_a_rewritten_csv_file_sends_the_next_pass_back_to_a_full_one(
    make_runtime: Any, make_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crm = _crm(tmp_path)
    runtime = make_runtime(make_settings(CRM_SOURCE=str(crm)))
    caplog.set_level(logging.INFO, logger="worker.planning.ahead")
    runtime.scheduler.run_planned_pass(NOW)
    runtime.scheduler.run_planned_pass(NOW + timedelta(minutes=1))
    assert caplog.text.count("planned ahead to") == 1
    # Customer 1 now has a birthday tomorrow: the export is written again.
    customers = crm / "customers.csv"
    lines = customers.read_text(encoding="utf-8").splitlines()
    cells = lines[1].split(",")
    cells[4] = "1990-03-15"
    lines[1] = ",".join(cells)
    customers.write_text("\n".join(lines) + "\n", encoding="utf-8")
    runtime.scheduler.run_planned_pass(NOW + timedelta(minutes=2))
    assert "(the source cannot say what changed (a CSV file written again))" in caplog.text
    report = runtime.scheduler.run_planned_pass(parse_instant("2026-03-15T12:00:00Z"))
    key = "birthday-greeting:customer:1:2026/email"
    assert key in report.queued or runtime.ledger.states([key])[key] != ""


def test_a_crm_event_re_plans_its_record(
    make_runtime: Any, make_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = make_runtime(make_settings(CRM_SOURCE=str(_crm(tmp_path))))
    runtime.scheduler.run_planned_pass(NOW)
    record_event(runtime.redis, "customer.updated", "1", at=NOW)
    assert runtime.redis.sismember(DIRTY_RECORDS_KEY, "customer:1")
    caplog.set_level(logging.INFO, logger="worker.planning.ahead")
    runtime.scheduler.run_planned_pass(NOW + timedelta(minutes=1))
    assert "re-planned " in caplog.text
    assert not runtime.redis.scard(DIRTY_RECORDS_KEY)


@pytest.mark.parametrize(
    ("value", "wanted"),
    [
        ("updated_at; DROP TABLE x", "changed_since: name one column"),
        ("[a, b]", "changed_since: name one column"),
    ],
)
def test_a_change_column_that_is_not_a_column_name_is_refused(
    tmp_path: Path, value: str, wanted: str
) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(
        f"customer:\n  query: SELECT id FROM contacts\n  changed_since: {value}\n",
        encoding="utf-8",
    )
    with pytest.raises(SourceError) as caught:
        load_mapping(path)
    assert f"{path}:3:" in str(caught.value)
    assert wanted in str(caught.value)


def test_a_change_column_becomes_a_filter_on_the_mapping_query(tmp_path: Path) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(
        "customer:\n  query: SELECT id, stamp FROM contacts\n  changed_since: stamp\n",
        encoding="utf-8",
    )
    queries = load_mapping(path).of("customer")
    assert (
        queries.changed
        == "SELECT * FROM (SELECT id, stamp FROM contacts) AS q WHERE q.stamp > :since"
    )
    assert queries.latest is not None and "MAX(q.stamp)" in queries.latest


def test_too_many_reported_changes_send_the_next_pass_back_to_a_full_one(
    make_runtime: Any,
    make_settings: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.planning.due_index.MAX_DIRTY_RECORDS", 3)
    runtime = make_runtime(make_settings(CRM_SOURCE=str(_crm(tmp_path))))
    runtime.scheduler.run_planned_pass(NOW)
    for customer_id in range(1, 6):
        record_event(runtime.redis, "customer.updated", str(customer_id), at=NOW)
    assert runtime.redis.scard(DIRTY_RECORDS_KEY) == 3  # the set stops growing
    caplog.set_level(logging.INFO, logger="worker.planning.ahead")
    runtime.scheduler.run_planned_pass(NOW + timedelta(minutes=1))
    assert "(the CRM reported more changed records than are kept one by one)" in caplog.text
    assert not runtime.redis.scard(DIRTY_RECORDS_KEY)
    caplog.clear()
    runtime.scheduler.run_planned_pass(NOW + timedelta(minutes=2))
    assert "planned ahead to" not in caplog.text  # the overflow was cleared with the plan
