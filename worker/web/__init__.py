"""The HTTP surfaces: the event intake (authenticated), the public unsubscribe pages and the
sales managers' console (logins).

* :mod:`~worker.web.intake` – where the CRM posts its events;
* :mod:`~worker.web.unsubscribe_pages` – one-click unsubscribe (RFC 8058) and its confirmation
pages;
* :mod:`~worker.web.console` – the sales managers' web console (``crm-worker console``);
* :mod:`~worker.web.server` – how uvicorn serves them to the internet (connection limit, read
  deadlines, bounded shutdown);
* :mod:`~worker.web.reading` – reading a request body within a size limit;
* :mod:`~worker.web.throttle` – one log line per kind of trouble per minute.

Everything a browser or a remote system can reach lives here, above the runtime it serves from.
"""
