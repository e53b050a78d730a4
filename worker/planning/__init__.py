"""What is due: from the CRM's records and the rules to planned deliveries.

* :mod:`~worker.planning.triggers` – a rule's trigger turned into occurrences (pure date logic);
* :mod:`~worker.planning.conditions` – a rule's ``if:`` compiled and evaluated;
* :mod:`~worker.planning.context` – the template context of one occurrence;
* :mod:`~worker.planning.events` – CRM events for ``event`` rules, kept in Redis;
* :mod:`~worker.planning.plan` – the pass: every rule over every record, due or skipped and why;
* :mod:`~worker.planning.contact_policy` – the cap on messages per customer per period;
* :mod:`~worker.planning.scheduler` – runs the pass every minute under a leader lock, claims
  what is due in the ledger and hands it to the delivery queue.

The scheduler hands batches to a queue it is given (:class:`~worker.planning.scheduler.BatchQueue`),
so planning never imports delivery; delivery imports planning to re-check a delivery at send time.
Local time (``worker.localtime``) stays a top-level module: rules and sources need it too, and they
sit below planning.
"""
