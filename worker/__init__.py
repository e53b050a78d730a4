"""CRM messaging automation worker.

The folders are the architecture, one per step an occurrence goes through: ``rules/`` (what
sales managers write) and ``sources/`` (the CRM), ``planning/`` (what is due; the scheduler claims
it), ``delivery/`` (a batch's life: re-check, render, send, record), ``messages/`` (the message
itself), ``channels/`` (SMTP, webhooks, outbox), ``records/`` (what is kept in Redis: ledger,
log, suppression), ``authoring/`` (check, preview, explain), ``web/`` (intake, unsubscribe
pages) and ``cli/``; ``settings`` and ``errors`` hold all of each. Imports run downward only:
README "How it works" and CONTRIBUTING.md.
"""

__version__ = "0.1.0"
