"""The sales managers' web console (``crm-worker console``): rules with their diagnostics,
what goes out when, why a customer gets what, previews, the delivery log.

* :mod:`~worker.web.console.app` – routes, logins, CSRF, security headers, serving;
* :mod:`~worker.web.console.pages` – what each page shows, from the parts the CLI uses;
* :mod:`~worker.web.console.users` – logins and roles (argon2id hashes in Redis);
* :mod:`~worker.web.console.sessions` – sessions and CSRF tokens.

Templates are in ``templates/``, the one stylesheet in ``static/``: no build step, no CDN.
"""

from worker.web.console.app import create_console_app, serve_console
from worker.web.console.users import ConsoleUser, ConsoleUsers

__all__ = ["ConsoleUser", "ConsoleUsers", "create_console_app", "serve_console"]
