"""Every Redis key prefix, limit and lifetime in one place, with its unit in its name."""

from __future__ import annotations

from datetime import timedelta

#: Prefix of every key the worker writes, so a shared Redis stays readable.
KEY_PREFIX = "crm"
#: One hash per delivery (occurrence + action): its state, reason and timestamps.
LEDGER_KEY_PREFIX = f"{KEY_PREFIX}:delivery:"
#: The scheduler leader lock: only the holder runs passes.
SCHEDULER_LOCK_KEY = f"{KEY_PREFIX}:scheduler:lock"
#: Redis Sentinel (``CRM_REDIS_URL=redis+sentinel://…``): the sentinels' usual port, and how
#: long a sentinel or the primary may take to answer before the next one is asked.
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_SOCKET_TIMEOUT_S = 2.0
#: Namespace of Dramatiq's own keys.
DRAMATIQ_NAMESPACE = f"{KEY_PREFIX}:dramatiq"

#: How long a delivery's ledger entry lives. Longer than any catch-up grace, so a due
#: occurrence can never be claimed twice; yearly keys carry the year, so they may expire.
LEDGER_TTL = timedelta(days=400)
#: A claimed delivery that is still not queued after this long was lost between claim and
#: enqueue (scheduler crash); the next pass enqueues it again.
CLAIM_STALE_AFTER = timedelta(minutes=5)
#: A delivery in "sending" longer than this belongs to a worker that died mid-send;
#: a redelivered message may take it over. Longer than the slowest send we allow (a batch
#: stops starting messages after BATCH_LEASE_SHARE of it), short enough that a killed
#: worker's deliveries are sent by the others within two minutes.
SEND_LEASE = timedelta(seconds=90)
#: Every delivery in a non-final state (claimed, queued, sending, retrying) has a deadline in
#: this sorted set (member: its ledger key, score: unix seconds). The sweeper takes over each
#: delivery whose deadline passed, whatever happened to the queue, a worker or the scheduler.
DEADLINE_INDEX_KEY = f"{KEY_PREFIX}:deadlines"
#: A claimed delivery is queued milliseconds later; one still claimed after this was lost
#: with its scheduler (killed mid-pass) and is queued by the sweeper.
CLAIM_DEADLINE = timedelta(seconds=60)
#: How long a queued delivery may wait for a worker on an empty queue before the sweeper
#: queues it again (its message was lost: Redis restarted, a worker died holding it).
QUEUE_DEADLINE = timedelta(seconds=60)
#: Added to a queued delivery's deadline per Dramatiq message ahead of it in the queue: a long
#: backlog is not mistaken for lost messages. ~5x the measured drain time of one batch message
#: (bench/README.md: ~2,500 deliveries/s, 50 per message), so only a stalled queue trips it.
QUEUE_DEADLINE_PER_MESSAGE = timedelta(seconds=0.1)
#: How often each worker process and each scheduler looks for deliveries past their deadline.
SWEEP_INTERVAL = timedelta(seconds=10)
#: Deliveries one sweeper step takes over (one Lua call; Redis runs nothing else meanwhile).
SWEEP_BATCH = 500
#: A delivery this many sweep intervals past its deadline is *stuck* (``crm-worker report``
#: exits 1): the sweeper should have taken it over long before. A worker whose heartbeat is
#: this many sweep intervals old counts as gone.
SWEEP_INTERVALS_OF_GRACE = 3
#: Non-final deliveries ``report``, ``status`` and the metrics look at one by one, oldest
#: deadline first (counts of all and of the stuck ones are exact beyond it).
BACKLOG_READ_LIMIT = 100_000
#: Worker processes' heartbeats (member: host:pid, score: unix seconds), written each sweep.
WORKERS_KEY = f"{KEY_PREFIX}:workers"
#: Heartbeats of schedulers (leader and standby) and of intakes (member: host:pid, score: unix
#: seconds), written every HEARTBEAT_INTERVAL; ``crm-worker health`` reads them.
SCHEDULERS_KEY = f"{KEY_PREFIX}:schedulers"
INTAKES_KEY = f"{KEY_PREFIX}:intakes"
HEARTBEAT_INTERVAL = timedelta(seconds=5)
#: A scheduler or intake whose heartbeat is older than this many intervals is unhealthy.
HEARTBEAT_INTERVALS_OF_GRACE = 6
#: Heartbeats older than this are dropped (a worker that has been gone a day is history).
WORKER_HEARTBEAT_KEPT = timedelta(days=1)
#: The leader scheduler's last pass: a hash of when, by whom, how long and what it queued.
SCHEDULER_LAST_PASS_KEY = f"{KEY_PREFIX}:scheduler:last-pass"
#: Backoff of a batch whose Redis connection failed inside the actor (Dramatiq's retries,
#: milliseconds): retried until Redis answers, never dead-lettered.
BROKER_RETRY_MIN_BACKOFF_MS = 1_000
BROKER_RETRY_MAX_BACKOFF_MS = 30_000
#: A message of a batch whose turn comes after this share of the send lease is put back unsent:
#: the lease must outlast the send, or another worker could take the delivery over mid-send.
BATCH_LEASE_SHARE = 0.5
#: When such a message is tried again (with a fresh lease).
BATCH_LEASE_RETRY = timedelta(seconds=1)

#: How many occurrence keys one Dramatiq message carries (ids only, a few hundred bytes
#: each): one message per email would cost more in queue overhead than the email itself.
DELIVERY_BATCH_SIZE = 50
#: Ledger keys one Lua call claims, queues or leases (a batch is one call; Redis runs nothing
#: else during a call, so a long list goes in several).
LEDGER_SCRIPT_KEYS = 500
#: Allocations between collections of young objects in a long-running worker or scheduler
#: (Python's default is 700; see ``worker.runtime._settle_garbage_collector``).
GC_YOUNG_THRESHOLD = 10_000
#: Keys ``Runtime.wait_for`` reads per poll (oldest first; a key seen final is not read again;
#: two batches, so a poll while the oldest batch is still going costs little).
WAIT_POLL_WINDOW = 100
#: Supervised worker processes (``worker.processes``): a child that dies is started again
#: after a pause that doubles from the first to the cap while it keeps dying young; a child
#: that ran this long counts as healthy again (its next death restarts it at once).
CHILD_RESTART_BACKOFF_FIRST = timedelta(seconds=1)
CHILD_RESTART_BACKOFF_MAX = timedelta(seconds=60)
CHILD_STABLE_AFTER = timedelta(seconds=30)
#: Every child died young this many times in a row: ``run --once`` stops waiting for them.
CHILD_HOPELESS_FAILURES = 4
#: Longest sleep of an idle Dramatiq consumer between polls of the queue, and of an idle
#: worker thread (Dramatiq's ``worker_timeout``, default 1 s). A worker process stops only once
#: each has woken up, twice in a row: 1 s made every SIGTERM (and the end of every
#: ``run --once``) take over 2 s, 0.25 s about 0.5 s. An idle process now polls Redis up to 10
#: times a second per consumer (a Lua call of ≈ 0.1 ms: about 0.1 % of a core).
WORKER_IDLE_POLL = timedelta(seconds=0.1)
#: How often the supervisor looks at its children, and a child at its supervisor.
SUPERVISOR_POLL = timedelta(seconds=0.1)
PARENT_WATCH_INTERVAL = timedelta(seconds=1)
#: How long children may drain after SIGTERM before they are SIGKILLed (``CRM_STOP_TIMEOUT_S``):
#: a batch in hand is finished first, well within this unless the relay is very slow.
STOP_TIMEOUT = timedelta(seconds=30)
#: Transient failures are retried this many times per delivery, then it is failed.
MAX_DELIVERY_ATTEMPTS = 6
#: Backoff for transient failures: first delay, doubling up to the cap.
RETRY_BACKOFF_FIRST = timedelta(seconds=30)
RETRY_BACKOFF_MAX = timedelta(minutes=30)

#: Scheduler lock lifetime; renewed every pass, so a dead leader is replaced after this. Longer
#: than the pass interval plus the longest pass (a pass over 1M customers takes ~10 s), short
#: enough that a standby finishes a killed leader's pass within two minutes.
SCHEDULER_LOCK_TTL = timedelta(seconds=90)
#: The lock lives at least this many pass intervals (room for the pass itself, a slow Redis).
SCHEDULER_LOCK_INTERVALS = 1.5
#: How often a standby scheduler tries the lock (at most; a shorter pass interval wins).
STANDBY_POLL = timedelta(seconds=10)

#: Default catch-up grace of a rule: how late a due message may still go out.
DEFAULT_GRACE = timedelta(days=1)

#: Rule files larger than this are refused before parsing (a rule is a few hundred bytes).
MAX_RULE_FILE_BYTES = 256 * 1024
#: YAML nodes per rule file after alias expansion (guards against "billion laughs").
MAX_RULE_NODES = 5_000
#: Nesting levels per rule file (a rule uses about five); deeper files are refused unread.
MAX_RULE_DEPTH = 32

#: Rendering limits: a template that runs longer or writes more fails that message only.
RENDER_DEADLINE_S = 2.0
MAX_RENDERED_BYTES = 512 * 1024
MAX_SUBJECT_CHARS = 200
#: Largest string/sequence a template may build with * or ** (e.g. 'x' * 10**8).
MAX_TEMPLATE_VALUE_LEN = 100_000
#: Largest range() a template may iterate over.
MAX_TEMPLATE_RANGE = 10_000
#: How long a rendered message trusts a template file, and the locale folder the fallback chose,
#: without looking at the disk again. Templates are hot-reloaded: an edit (or a new locale
#: folder) is used by messages rendered at most this long after it was saved; looking once a
#: second instead of once per message saves a stat() per file and a listdir per template.
TEMPLATE_RECHECK_S = 1.0
#: Distinct (template, customer locale) answers of the locale fallback kept between rechecks
#: (the locale is CRM data: a dirty column must not grow the cache without bound).
MAX_CACHED_LOCALE_CHOICES = 4096

#: The random unsubscribe secret used when CRM_UNSUBSCRIBE_SECRET is unset (never expires:
#: losing it breaks the unsubscribe link of every mail already sent).
UNSUBSCRIBE_SECRET_KEY = f"{KEY_PREFIX}:unsubscribe:secret"
#: Length of the HMAC-SHA256 kept in an unsubscribe token: 128 bits, a short link.
UNSUBSCRIBE_MAC_BYTES = 16
#: Longer tokens are refused before any decoding (an address token is ~100 characters).
MAX_UNSUBSCRIBE_TOKEN_CHARS = 1024
#: A one-click POST carries ``List-Unsubscribe=One-Click``; anything much larger is refused.
MAX_UNSUBSCRIBE_BODY_BYTES = 1024
#: Requests one client may make to the unsubscribe pages in any minute (then 429).
UNSUBSCRIBE_REQUESTS_PER_MINUTE = 30
#: Clients the rate limit remembers (the oldest are forgotten first).
MAX_RATE_LIMITED_CLIENTS = 10_000
#: How long after an unsubscribe its page offers the way back.
RESUBSCRIBE_WITHIN = timedelta(hours=24)

#: Longest display name put in a To header (longer CRM names are cut): keeps the header line
#: of even an unbreakable ASCII name far below SMTP's 998-octet limit.
MAX_DISPLAY_NAME_CHARS = 300
#: Fold width for headers that need RFC 2047 encoded words: at 78 Python writes words of 76
#: characters, over RFC 2047's limit of 75; at 76 they stay within it.
ENCODED_HEADER_FOLD_COLUMNS = 76

#: Rows per chunk when a pass streams an entity from a SQL source (psycopg's stream, or a
#: server-side cursor's round trip): memory stays bounded by this, whatever the table's size.
SQL_FETCH_CHUNK_ROWS = 1_000
#: Records a pass evaluates together once screened: their customers are fetched in one
#: ``get_many`` (one query on a SQL source, within any driver's parameter limit).
PLAN_LOOKUP_CHUNK = 500
#: How long opening a connection to the CRM database may take before the pass gives up.
SQL_CONNECT_TIMEOUT_S = 10
#: The SQL mapping file (CRM_SOURCE_QUERIES) is refused above this size.
MAX_QUERIES_FILE_BYTES = 256 * 1024

#: A webhook's Retry-After is honoured up to this; a larger one waits this long.
WEBHOOK_MAX_RETRY_AFTER = timedelta(hours=1)
#: Characters of a webhook's error reply kept in the ledger and logs.
WEBHOOK_MAX_REPLY_CHARS = 200
#: CRM events (``crm-worker event``, the HTTP intake): one hash per event, and per event
#: type a sorted set of event ids by time. Kept only as long as an event rule may still act on
#: them (longer than any rule's grace), and capped per type so a flood cannot fill Redis.
EVENT_KEY_PREFIX = f"{KEY_PREFIX}:event:"
EVENT_INDEX_PREFIX = f"{KEY_PREFIX}:events:"
EVENT_TTL = timedelta(days=7)
MAX_EVENTS_PER_TYPE = 100_000
#: Largest JSON payload an event may carry (templates see it as ``event.data``).
MAX_EVENT_DATA_BYTES = 16 * 1024
#: Deepest nesting of objects and lists in a posted event (the event itself is level 1; real
#: ``data`` is flat). Deeper JSON is refused before it reaches code that recurses per level.
MAX_EVENT_JSON_DEPTH = 32

#: Contact cap: one sorted set per customer of the deliveries counted against the cap
#: (member = delivery key, score = claim time).
CONTACT_KEY_PREFIX = f"{KEY_PREFIX}:contact:"
#: Addresses that must never get mail again (hard bounces, complaints): a hash of
#: address -> JSON {reason, at, key}. Never expires.
SUPPRESSION_KEY = f"{KEY_PREFIX}:suppression"
#: The outbox of suppression events for the CRM (a stream, oldest first; field ``event`` is the
#: JSON body as it is posted). Written in the same Lua call as the suppression change; an entry
#: leaves only once the CRM answered 2xx. Written only with CRM_CRM_EVENTS_URL set.
SUPPRESSION_EVENTS_KEY = f"{KEY_PREFIX}:suppression:events"
#: Held by the one process posting the outbox right now (value: its token; expires on its own
#: when that process dies), so two sweepers never post the same event at the same time.
SUPPRESSION_EVENTS_LOCK_KEY = f"{KEY_PREFIX}:suppression:events:lock"
#: The outbox's retry state after the CRM failed: a hash of ``attempts`` and ``next_at``.
SUPPRESSION_EVENTS_RETRY_KEY = f"{KEY_PREFIX}:suppression:events:retry"
#: The name of the CRM's event endpoint when CRM_CRM_EVENTS_URL is a URL (not a webhook name).
CRM_EVENTS_ENDPOINT = "crm-events"
#: Events posted per sweep at most (in order; the rest wait for the next sweep).
CRM_EVENTS_PER_SWEEP = 200
#: After the CRM failed: wait this long, doubled per failure up to the maximum.
CRM_EVENTS_BACKOFF_FIRST = timedelta(seconds=2)
CRM_EVENTS_BACKOFF_MAX = timedelta(minutes=5)
#: While this key holds a future timestamp, no worker sends: the relay refused *us*
#: (authentication, 5.7.x policy). Shared in Redis so every worker process pauses at once.
SEND_PAUSE_KEY = f"{KEY_PREFIX}:smtp:paused_until"
#: How long sending pauses after the relay refused us; long enough for an operator alert,
#: short enough that a passing policy block (rate limit, reputation) clears by itself.
SEND_PAUSE = timedelta(minutes=5)
#: Every delivery outcome, newest last: a capped Redis stream (trimmed approximately, which
#: is cheap) read by `crm-worker report` and `retry-failed`.
DELIVERY_LOG_KEY = f"{KEY_PREFIX}:delivery-log"
DELIVERY_LOG_MAXLEN = 200_000
#: Longest SMTP reply / reason kept per log entry.
DELIVERY_LOG_TEXT_CHARS = 500
#: Dramatiq's own defaults for its Redis broker (dramatiq/brokers/redis.py): a worker silent
#: this long is dead, and dead workers' messages are requeued on this many commands in a million.
BROKER_HEARTBEAT_TIMEOUT = timedelta(seconds=60)
BROKER_MAINTENANCE_CHANCE = 1000
#: A kept-open SMTP connection idle this long is probed with NOOP before use (servers drop idle
#: clients after 30-300 s; RFC 5321 asks them to wait at least 5 minutes); one idle longer
#: than the timeout is replaced without asking.
SMTP_IDLE_CHECK = timedelta(seconds=20)
SMTP_IDLE_TIMEOUT = timedelta(seconds=240)

#: Event intake (HTTP): the largest request body accepted (an event is ids and a small ``data``
#: of at most MAX_EVENT_DATA_BYTES), and how far a signed request's timestamp may be off: a
#: captured request cannot be replayed later, and within the window the event id makes a
#: replay a duplicate that sends nothing.
MAX_INTAKE_BODY_BYTES = 64 * 1024
INTAKE_SIGNATURE_MAX_AGE = timedelta(minutes=5)
#: How far ahead of the intake's clock an event's ``at`` may be (the CRM's clock drifts).
MAX_EVENT_CLOCK_SKEW = timedelta(minutes=5)
#: Shortest intake token or signing secret accepted (guessing must stay hopeless).
MIN_INTAKE_SECRET_CHARS = 16
#: What a 503 of the intake asks the CRM to wait before retrying (Redis is down).
INTAKE_RETRY_AFTER_S = 30
#: How long ``crm-worker event --post`` waits for the intake's answer.
INTAKE_CLIENT_TIMEOUT_S = 30.0
#: Largest request line plus headers the intake reads (431 past it, however they arrive: h11
#: itself limits only headers still incomplete after a read, so the intake measures them in h11's
#: buffer before each request is parsed); ours are a few hundred bytes.
MAX_INTAKE_HEADER_BYTES = 8 * 1024
#: After refusing a request it did not read (headers too large), the intake reads and drops
#: what the client still sends for this long, or this many bytes, before closing: closing with
#: unread data makes the kernel reset the connection, and the client would lose the answer.
INTAKE_REFUSED_LINGER_S = 2.0
INTAKE_REFUSED_DRAIN_BYTES = 1024 * 1024
#: Connections the kernel may queue for the intake before it accepts them (a CRM whose
#: connection is not queued retries its SYN within a second).
INTAKE_LISTEN_BACKLOG = 32
#: File descriptors accepted connections may hold before the connection limit has closed them:
#: asyncio accepts up to the backlog per event-loop round, and an accepted socket reaches the
#: protocol, is refused and is closed over about four rounds, while accepting goes on.
INTAKE_ACCEPTING_FDS = 4 * INTAKE_LISTEN_BACKLOG
#: File descriptors the intake keeps free for its own use (Redis connections, the listening
#: socket, logs; about ten at rest) when it fits CRM_INTAKE_MAX_CONNECTIONS to the process's
#: open-file limit (with INTAKE_ACCEPTING_FDS).
INTAKE_SPARE_FDS = 64
#: Each kind of trouble on the public intake (a refused connection, a timed-out request, a
#: client gone mid-body) is logged at most once per this many seconds, with a count.
INTAKE_LOG_INTERVAL_S = 60.0
#: Distinct kinds of log line the throttle remembers (a bound on its memory).
MAX_THROTTLED_LOG_KINDS = 256

#: How long the embedded redis-server may take to answer after it was started, and to exit
#: after SHUTDOWN (it writes its data out first).
EMBEDDED_REDIS_START_TIMEOUT_S = 20.0
EMBEDDED_REDIS_STOP_TIMEOUT_S = 30.0

#: Longest log line (each line of a traceback too): a line names what happened and the few
#: keys or counts it is about, never a batch's 50 keys.
MAX_LOG_LINE_CHARS = 300
#: A long pass logs its progress this often (INFO), so the log shows it is alive.
PASS_PROGRESS_INTERVAL = timedelta(seconds=10)

#: Distinct unknown time-zone names in the CRM data warned about per process (each once); past
#: this, dirty data must not flood the log.
MAX_REPORTED_UNKNOWN_ZONES = 100

#: Customers ``check`` reads to find the locales the templates must serve (a full read of a
#: CRM with millions of customers would make ``check`` slow; the first ones show the mix).
MAX_LOCALE_SCAN = 200_000
#: The feedback mailbox (`crm-worker mailbox`): a mail larger than this is not downloaded or
#: parsed (a bounce or complaint is a few kilobytes; an attachment-laden reply is not one).
MAX_FEEDBACK_MAIL_BYTES = 2 * 1024 * 1024
#: Mails handled per pass, so one pass over a flooded inbox ends and reports in bounded time.
MAILBOX_BATCH = 500
#: Soft bounces per address: a sorted set (member = the bounce's own Message-ID, so a mail
#: read twice counts once; score = time) trimmed to the counting window.
SOFT_BOUNCE_KEY_PREFIX = f"{KEY_PREFIX}:soft-bounce:"
#: Where each outcome of a feedback mail is filed, under CRM_MAILBOX_FOLDER_PREFIX.
FEEDBACK_FOLDERS = ("unsubscribed", "bounced", "soft-bounce", "complaint", "auto-reply", "other")

#: The sales managers' web console (`crm-worker console`). Logins: one hash, user name ->
#: JSON {"hash": argon2id, "role": viewer|editor, "email": …}; sessions: one key each (a hash
#: of user, role, CSRF token) that expires on its own.
CONSOLE_USERS_KEY = f"{KEY_PREFIX}:console:users"
CONSOLE_SESSION_KEY_PREFIX = f"{KEY_PREFIX}:console:session:"
#: A console session ends this long after its login (and at logout).
CONSOLE_SESSION_TTL = timedelta(hours=8)
#: Login attempts one client (and one user name) may make per minute; more are answered 429.
CONSOLE_LOGINS_PER_MINUTE = 10
#: A console form's body at most: a rule file (MAX_RULE_FILE_BYTES) URL-encoded can triple.
MAX_CONSOLE_FORM_BYTES = 3 * MAX_RULE_FILE_BYTES + 4 * 1024
#: The shortest console password `console-user add` accepts.
MIN_CONSOLE_PASSWORD_CHARS = 12
#: How far ahead /upcoming?days=N may look (each day is a plan over every record).
CONSOLE_MAX_UPCOMING_DAYS = 92
#: What /rules counts: sends in the last and the next this many days.
CONSOLE_RULE_SPAN = timedelta(days=30)
#: /rules reuses its count of the next CONSOLE_RULE_SPAN's sends (a plan over every record)
#: this long, or until a rule is saved: about 3 s per 100,000 customers (bench/console_pages.py).
CONSOLE_FORECAST_TTL = timedelta(minutes=5)
#: Delivery log entries /deliveries shows at most (newest first).
CONSOLE_DELIVERIES_SHOWN = 500
#: Old versions of rule files saved by the console go to CRM_DATA_DIR/<this>/.
RULE_BACKUP_FOLDER = "rule-backups"

#: The due-index (:mod:`worker.planning.due_index`): the deliveries planned ahead, a sorted
#: set (member: delivery key, score: due instant in unix seconds). Only a plan: every member
#: is checked against fresh CRM data and claimed in the ledger when it falls due.
DUE_INDEX_KEY = f"{KEY_PREFIX}:plan:due"
#: Which index members each planned record has (hash: ``entity:id`` → space-separated keys),
#: so a changed record's entries are replaced, not left behind.
DUE_INDEX_RECORDS_KEY = f"{KEY_PREFIX}:plan:records"
#: The plan's own state (hash): horizon end, rules fingerprint, change watermarks.
DUE_INDEX_STATE_KEY = f"{KEY_PREFIX}:plan:state"
#: Records the CRM's events named (set of ``entity:id``): re-planned at the next pass.
DIRTY_RECORDS_KEY = f"{KEY_PREFIX}:plan:dirty"
#: The dirty records a pass took (moved here at once when the pass starts, so a mark added
#: while it runs stays for the next pass); deleted once re-planned, merged again if it failed.
DIRTY_TAKEN_KEY = f"{KEY_PREFIX}:plan:dirty:taken"
#: Set when events named more records than ``MAX_DIRTY_RECORDS``: the next pass is a full
#: one. Its own key, so that a full pass that started before it was set does not erase it.
DIRTY_OVERFLOW_KEY = f"{KEY_PREFIX}:plan:dirty:overflow"
#: A full pass writes its plan aside under ``<DUE_INDEX_KEY>:building:<pass token>`` (and the
#: same for the records hash), each pass its own; they expire this long after the last write,
#: so a pass killed midway leaves nothing behind.
DUE_INDEX_BUILDING_TTL = timedelta(minutes=15)
#: Beyond this many, events stop adding records to the dirty set and the next pass is a full
#: one instead (an intake running for days without a scheduler must not grow it for ever).
MAX_DIRTY_RECORDS = 100_000
#: A full planning pass runs this long before the planned horizon ends, so the index always
#: reaches past the next pass even when a full pass over a large CRM takes minutes.
PLAN_AHEAD_MARGIN = timedelta(hours=1)
#: Index entries (and dirty records) written or read per Redis round trip.
DUE_INDEX_CHUNK = 2_000
