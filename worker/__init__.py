"""CRM messaging automation worker.

The folders are the architecture: ``rules/`` (what sales managers write), ``triggers`` and
``planning`` (what is due), ``scheduler`` and ``ledger`` (claim once, queue), ``actors`` and
``delivery`` (re-check, render, send), ``rendering`` and ``mail`` (the message), ``channels/``
(SMTP, outbox), ``sources/`` (the CRM), ``settings`` and ``errors`` (one of each).
"""

__version__ = "0.1.0"
