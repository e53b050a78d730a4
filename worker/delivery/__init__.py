"""The exactly-once send: from a claimed occurrence key to a recorded outcome.

* :mod:`~worker.delivery.actors` – the Dramatiq actor a batch of keys arrives on;
* :mod:`~worker.delivery.batch` – one batch's life, top-down: take the keys, re-check, render,
  send, record;
* :mod:`~worker.delivery.send` – what goes out for one delivery: the re-check and the message;
* :mod:`~worker.delivery.outcome` – how an outcome is written to the ledger, log and metrics;
* :mod:`~worker.delivery.payload` – webhook bodies;
* :mod:`~worker.delivery.sweeper` – takes over deliveries whose deadline passed (a killed worker,
  a lost queue) and queues them again;
* :mod:`~worker.delivery.feedback` and :mod:`~worker.delivery.mailbox` – what comes back after a
  send: bounces, complaints and ``mailto:`` unsubscribes read over IMAP.

Delivery sits above planning (it re-checks with the planner), messages and channels, and below
the runtime that wires it to Redis and the command line.
"""
