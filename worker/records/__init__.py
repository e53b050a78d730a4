"""What the worker remembers in Redis: the records every flow reads and writes.

* :mod:`~worker.records.ledger` – one entry per occurrence key, the exactly-once promise's memory
  (claimed → queued → sending → sent | skipped | failed | unknown), with deadlines;
* :mod:`~worker.records.delivery_log` – every outcome with its time, channel and reply;
* :mod:`~worker.records.suppression` – addresses that must not be mailed, with scope and reason;
* :mod:`~worker.records.pause` – the operator's pause switch;
* :mod:`~worker.records.backlog` and :mod:`~worker.records.status` – the queue and heartbeats
  that ``crm-worker status`` and the metrics read;
* :mod:`~worker.records.delivery_state` – ledger state and suppression as ``plan`` shows them.

Why a package of its own, below planning and delivery: the scheduler claims in the ledger, the
send step records in it, ``plan --explain`` reads it, the unsubscribe page writes suppressions and
``status`` reads the heartbeats. Kept here, every one of them imports downwards; these modules
know nothing of who calls them (only settings-free Redis access, keys from ``constants``).
"""
