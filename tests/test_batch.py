"""A batch of deliveries handled as a unit (worker.delivery.batch): shared round trips and
connections, the same outcome for every key as one by one."""

from __future__ import annotations

import shutil
from collections import Counter
from email import message_from_bytes
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.conftest import REPO, SmtpSink
from tests.faultkit import NOW, free_port, write_crm
from worker.delivery.batch import deliver_batch
from worker.localtime import utc_now
from worker.messages.mail import message_id_for


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
    # One connection: the batch's messages go one after the other (over several connections
    # two messages to one address can be on the wire at once, and both meet the refusal).
    runtime = _runtime(make_runtime, make_settings, tmp_path, smtp_server, CRM_SMTP_CONNECTIONS="1")
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


class _LedgerWatchingSink(SmtpSink):
    """A sink that, when a connection starts its next message, looks up in the ledger the
    message that connection delivered before: it must already be recorded as sent."""

    def __init__(self, host: str, port: int, ledger: Any, keys: list[str], domain: str) -> None:
        super().__init__(host, port)
        self.ledger = ledger
        self.key_of = {message_id_for(key, domain): key for key in keys}
        self.checked: list[str] = []
        self.unrecorded: list[tuple[str, str]] = []

    async def handle_MAIL(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: Any
    ) -> str:
        previous = getattr(session, "delivered", None)
        if previous is not None:
            state = self.ledger.states([previous])[previous]
            self.checked.append(previous)
            if state != "sent":
                self.unrecorded.append((previous, state))
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        reply = await super().handle_DATA(server, session, envelope)
        message_id = message_from_bytes(envelope.original_content)["Message-ID"]
        session.delivered = self.key_of[message_id]
        return reply


def test_each_outcome_is_recorded_before_its_connection_sends_again(
    tmp_path, make_runtime, make_settings
):
    count = 40
    write_crm(tmp_path / "crm", count)
    keys = [f"birthday-greeting:customer:{n}:2026/email" for n in range(1, count + 1)]
    port = free_port()
    address = SmtpSink("127.0.0.1", port)
    runtime = _runtime(make_runtime, make_settings, tmp_path, address, CRM_SMTP_CONNECTIONS="4")
    sink = _LedgerWatchingSink("127.0.0.1", port, runtime.ledger, keys, "shop.example.com")
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    try:
        summary = runtime.run_once(NOW)
    finally:
        controller.stop()
    assert sorted(summary.report.queued) == sorted(keys)
    assert summary.states == Counter({"sent": count})
    assert sink.unrecorded == []
    assert len(sink.checked) == count - 4  # every message but each connection's first
