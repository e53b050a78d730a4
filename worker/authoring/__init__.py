"""What the people who write rules ask: ``check``, ``preview`` and ``plan --explain``.

* :mod:`~worker.authoring.validation` – every rule, template and mapping checked, with
file:line:col;
* :mod:`~worker.authoring.preview` – the real message a customer would get, without sending it;
* :mod:`~worker.authoring.explanation` – why a customer gets, or does not get, each rule's message.

A package of its own because each answer combines planning, the records and delivery's own
message building (a preview is the send step with the channel left out); the command line and the
web console both sit above it.
"""
