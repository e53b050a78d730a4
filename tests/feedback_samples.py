"""Mails as they arrive in the feedback mailbox: DSNs (RFC 3464) as Postfix writes them, an ARF
complaint (RFC 5965) as a feedback loop sends it, a qmail bounce (QSBMF), a vacation notice,
mailto unsubscribes, and broken ones. ``ORIGINAL_ID`` is the Message-ID of the mail they
answer, as :func:`worker.messages.mail.message_id_for` derives it."""

from __future__ import annotations

from worker.messages.mail import message_id_for

DOMAIN = "shop.example.com"
DELIVERY_KEY = "birthday-greeting:42:2026-12-05/email"
ORIGINAL_ID = message_id_for(DELIVERY_KEY, DOMAIN)

_ORIGINAL_HEADERS = f"""\
Return-Path: <crm@shop.example.com>
From: Example Shop <crm@shop.example.com>
To: {{rcpt}}
Subject: Happy birthday, Jo!
Date: Sat, 05 Dec 2026 09:00:00 +0000
Message-ID: {ORIGINAL_ID}
List-Unsubscribe: <https://shop.example.com/unsubscribe/2.abc.def>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
"""


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def dsn(
    rcpt: str, status: str, diagnostic: str, *, action: str = "failed", number: int = 1
) -> bytes:
    """A Postfix delivery status notification for our mail to ``rcpt``."""
    headers = _ORIGINAL_HEADERS.replace("{rcpt}", rcpt)
    return _crlf(f"""\
Return-Path: <>
Received: by mx.shop.example.com (Postfix) id 4QX1; Sat,  5 Dec 2026 09:00:05 +0000 (UTC)
Date: Sat,  5 Dec 2026 09:00:05 +0000 (UTC)
From: MAILER-DAEMON@mx.shop.example.com (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: crm@shop.example.com
Auto-Submitted: auto-replied
Message-ID: <dsn-{number}-{status}@mx.shop.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4QX1.1733389205/mx.shop.example.com"

This is a MIME-encapsulated message.

--4QX1.1733389205/mx.shop.example.com
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.shop.example.com.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{rcpt}>: host mx.example.net[192.0.2.7] said: {diagnostic}

--4QX1.1733389205/mx.shop.example.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.shop.example.com
X-Postfix-Queue-ID: 4QX1
X-Postfix-Sender: rfc822; crm@shop.example.com
Arrival-Date: Sat,  5 Dec 2026 09:00:00 +0000 (UTC)

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; {diagnostic}

--4QX1.1733389205/mx.shop.example.com
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers}
--4QX1.1733389205/mx.shop.example.com--
""")


def arf(rcpt: str) -> bytes:
    """A feedback loop complaint (RFC 5965) about our mail to ``rcpt``."""
    headers = _ORIGINAL_HEADERS.replace("{rcpt}", rcpt)
    return _crlf(f"""\
From: <staff@fbl.example.net>
Date: Sat, 05 Dec 2026 12:00:00 +0000
Subject: FW: Happy birthday, Jo!
To: <abuse@shop.example.com>
Message-ID: <arf-1@fbl.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Sat, 05 Dec 2026 09:00:01 +0000.
For more information about this format please see
http://www.mipassoc.org/arf/.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <crm@shop.example.com>
Original-Rcpt-To: <{rcpt}>
Arrival-Date: Sat, 05 Dec 2026 09:00:01 +0000
Reporting-MTA: dns; mail.fbl.example.net
Source-IP: 192.0.2.1
Reported-Domain: shop.example.com

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

{headers}
Jo, happy birthday from all of us.

--part1_13d.2e68ed54_boundary--
""")


def qmail_bounce(rcpt: str) -> bytes:
    """A qmail bounce (QSBMF): no MIME report, our headers quoted in the text."""
    headers = _ORIGINAL_HEADERS.replace("{rcpt}", rcpt)
    return _crlf(f"""\
Return-Path: <>
Date: 5 Dec 2026 09:00:07 -0000
From: MAILER-DAEMON@mail.example.org
To: crm@shop.example.com
Subject: failure notice
Message-ID: <qmail-1@mail.example.org>

Hi. This is the qmail-send program at mail.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{rcpt}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

{headers}
Jo, happy birthday from all of us.
""")


def vacation(sender: str) -> bytes:
    """An out-of-office answer (RFC 3834) to our mail."""
    return _crlf(f"""\
From: Jo Example <{sender}>
To: crm@shop.example.com
Subject: Out of office: Happy birthday, Jo!
Date: Sat, 05 Dec 2026 09:01:00 +0000
Message-ID: <vacation-1@example.org>
In-Reply-To: {ORIGINAL_ID}
Auto-Submitted: auto-replied (vacation)
Precedence: bulk

I am away until January and read no mail.
""")


def mailto_unsubscribe(sender: str, token: str) -> bytes:
    """What a mail client sends for the ``mailto:`` of ``List-Unsubscribe``."""
    return _crlf(f"""\
From: {sender}
To: unsubscribe@shop.example.com
Subject: unsubscribe {token}
Date: Sat, 05 Dec 2026 10:00:00 +0000
Message-ID: <unsub-{token[-12:]}@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

This message was automatically generated by Gmail.
""")


def personal(sender: str) -> bytes:
    """A person writing back."""
    return _crlf(f"""\
From: {sender}
To: crm@shop.example.com
Subject: Re: Happy birthday, Jo!
Message-ID: <human-1@example.org>

Thanks! Can I change my delivery address?
""")


#: Broken mails: each must end in ``other`` without stopping the run.
MALFORMED = {
    "no headers": b"just some text without any header\r\n\r\nmore\r\n",
    "empty": b"",
    "binary garbage": bytes(range(256)) * 8,
    "broken MIME": _crlf("""\
From: x@example.org
Subject: broken
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="never-closed"

--never-closed
Content-Type: message/delivery-status

Final-Recipient: rfc822; <<<@@@>>>
Action: failed
Status: 9.9.9
"""),
    "report without parts": _crlf("""\
From: x@example.org
Subject: empty report
Content-Type: multipart/report; report-type=feedback-report; boundary="b"

"""),
}
