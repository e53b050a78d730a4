"""Building the message: from a template and a context to the bytes a channel sends.

* :mod:`~worker.messages.rendering` – the sandboxed Jinja environment, locales and fallbacks;
* :mod:`~worker.messages.filters` – money, dates, plurals, greetings per reader;
* :mod:`~worker.messages.template_fields` – every field and filter a template reads (for ``check``);
* :mod:`~worker.messages.mail` – the MIME message and its headers (List-Unsubscribe, Message-ID);
* :mod:`~worker.messages.wire` – the same message as bytes, fast;
* :mod:`~worker.messages.signature` – DKIM;
* :mod:`~worker.messages.unsubscribe` – signed unsubscribe tokens and links;
* :mod:`~worker.messages.addresses` – recipient addresses, checked and normalised.

Nothing here knows what is due or whether it was sent: planning and delivery call these
functions with what they decided, so the same message is built for a real send, a preview and
``check``.
"""
