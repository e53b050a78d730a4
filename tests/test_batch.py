"""A batch of deliveries handled as a unit (worker.batch): shared round trips and connections,
the same outcome for every key as one by one."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import REPO, SmtpSink
from tests.faultkit import NOW, write_crm
from worker.batch import deliver_batch
from worker.localtime import utc_now


def _runtime(make_runtime: Any, make_settings: Any, tmp_path: Path, smtp: SmtpSink, **env: str):  # type: ignore[no-untyped-def]
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(REPO / "rules" / "birthday-greeting.yaml", rules)
    settings = make_settings(
        CRM_SOURCE=str(tmp_path / "crm"),
        CRM_RULES_DIR=str(rules),
        CRM_SMTP_HOST=smtp.host,
        CRM_SMTP_PORT=str(smtp.port),
        CRM_SMTP_SECURITY="none",
        **env,
    )
    return make_runtime(settings)


def test_a_batch_goes_out_over_several_connections_each_outcome_recorded(
    tmp_path, smtp_server, make_runtime, make_settings
):
    write_crm(tmp_path / "crm", 12)
    runtime = _runtime(make_runtime, make_settings, tmp_path, smtp_server, CRM_SMTP_CONNECTIONS="3")
    summary = runtime.run_once(NOW)
    assert summary.states == Counter({"sent": 12})
    assert len(set(smtp_server.message_ids())) == len(smtp_server.message_ids()) == 12
    assert smtp_server.ehlo_count == 3  # one batch, one thread, three connections
    logged = [entry for entry in runtime.delivery_log.read() if entry.status == "sent"]
    assert sorted(entry.key for entry in logged) == sorted(summary.report.queued)
    assert all(entry.reply.startswith("250") for entry in logged)


def test_an_address_refused_earlier_in_the_batch_is_not_tried_again(
    tmp_path, smtp_server, make_runtime, make_settings
):
    addresses = write_crm(tmp_path / "crm", 4)
    customers = tmp_path / "crm" / "customers.csv"
    # Customers 1 and 2 share an address that does not exist.
    customers.write_text(customers.read_text().replace(addresses[1], addresses[0]))
    smtp_server.refuse_rcpt[addresses[0]] = f"550 5.1.1 <{addresses[0]}>: no such user"
    runtime = _runtime(make_runtime, make_settings, tmp_path, smtp_server)
    summary = runtime.run_once(NOW)
    assert summary.states == Counter({"sent": 2, "failed": 1, "skipped": 1})
    assert smtp_server.rcpt_attempts[addresses[0]] == 1
    skipped = [e for e in runtime.delivery_log.read() if e.status == "skipped"]
    assert len(skipped) == 1 and "suppressed" in skipped[0].reason


def test_one_result_per_key_in_order_for_done_and_unknown_keys(
    tmp_path, smtp_server, make_runtime, make_settings
):
    write_crm(tmp_path / "crm", 2)
    runtime = _runtime(make_runtime, make_settings, tmp_path, smtp_server)
    sent = runtime.run_once(NOW).report.queued
    unknown = "birthday-greeting:customer:999:2026/email"
    keys = [sent[0], unknown, sent[1]]
    results = deliver_batch(runtime.deliverer, keys, as_of=NOW, enqueued_at=utc_now())
    assert [(r.key, r.outcome) for r in results] == [
        (sent[0], "duplicate"),
        (unknown, "skipped"),
        (sent[1], "duplicate"),
    ]
    assert len(smtp_server.received) == 2  # nothing sent twice
