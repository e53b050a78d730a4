"""``python -m worker.cli``: the ``crm-worker`` command, as supervised children start it."""

from worker.cli import main

main()
