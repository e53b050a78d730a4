"""What the people who write rules ask: ``check``, ``preview``, ``plan --explain``, and what the
console adds (a checked edit, the calendar ahead, triggers in words).

* :mod:`~worker.authoring.validation` – every rule, template and mapping checked, with
file:line:col;
* :mod:`~worker.authoring.preview` – the real message a customer would get, without sending it;
* :mod:`~worker.authoring.explanation` – why a customer gets, or does not get, each rule's message;
* :mod:`~worker.authoring.rule_edit` – a rule file changed from the console: checked as ``check``
  checks it, written atomically with a backup;
* :mod:`~worker.authoring.upcoming` – what goes out per day and rule over the days ahead;
* :mod:`~worker.authoring.wording` – a rule's trigger in words.

A package of its own because each answer combines planning, the records and delivery's own
message building (a preview is the send step with the channel left out); the command line and the
web console both sit above it.
"""
