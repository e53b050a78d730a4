"""A real IMAP server for the tests: Dovecot from the Debian packages (``dovecot-imapd``),
started in a temporary directory on a free loopback port, one user, Maildir storage.

Run as root (CI containers) the mail processes must not be root (Dovecot refuses UID 0 for
mail access), so the mail belongs to the ``dovecot`` user the package creates.

``dovecot(tls=True)``: a self-signed certificate for 127.0.0.1 is made with ``openssl``, IMAPS
listens on ``tls_port`` and the plain port offers STARTTLS (Dovecot still takes a plain
login from loopback, which it counts as secure)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

USER = "feedback"
PASSWORD = "s3cret-for-tests"


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    user: str
    password: str
    root: Path
    #: With ``tls=True``: the IMAPS port and the certificate (its own CA, PEM).
    tls_port: int = 0
    ca_file: Path | None = None


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if Path(p).is_file()), None
    )


def _accounts() -> tuple[str, str, int, int]:
    """Internal user, login user, and the uid/gid that owns the mail."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid
    internal = pwd.getpwnam("dovecot")
    login = "dovenull" if _exists("dovenull") else "dovecot"
    return "dovecot", login, internal.pw_uid, internal.pw_gid


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _certificate(root: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _config(root: Path, port: int, tls: tuple[Path, Path, int] | None = None) -> str:
    internal, login, uid, gid = _accounts()
    if tls is None:
        ssl = "ssl = no\ndisable_plaintext_auth = no"
        imaps_port = 0
    else:
        cert, key, imaps_port = tls
        ssl = f"ssl = required\nssl_cert = <{cert}\nssl_key = <{key}\ndisable_plaintext_auth = yes"
    return f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{root}/mail/%u
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
"""


@contextmanager
def dovecot(*, tls: bool = False) -> Iterator[ImapServer]:
    """Start Dovecot, wait until it greets, stop it and remove its files afterwards."""
    binary = dovecot_binary()
    assert binary is not None
    root = Path(tempfile.mkdtemp(prefix="crm-dovecot-"))
    root.chmod(0o755)  # the mail processes run as the dovecot user
    _, _, uid, gid = _accounts()
    for sub in ("mail", "home", "state", "run"):
        (root / sub).mkdir()
    for sub in ("mail", "home"):
        os.chown(root / sub, uid, gid)
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    port = free_port()
    cert: Path | None = None
    tls_port = 0
    if tls:
        cert, key = _certificate(root)
        key.chmod(0o644)  # read by the login processes, which are not root
        tls_port = free_port()
        (root / "dovecot.conf").write_text(_config(root, port, (cert, key, tls_port)))
    else:
        (root / "dovecot.conf").write_text(_config(root, port))
    process = subprocess.Popen(
        [binary, "-F", "-c", str(root / "dovecot.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_greeting(port, process, root)
        yield ImapServer("127.0.0.1", port, USER, PASSWORD, root, tls_port, cert)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_greeting(port: int, process: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            log = root / "dovecot.log"
            raise RuntimeError(
                f"dovecot exited ({process.returncode}): {output}"
                + (log.read_text() if log.exists() else "")
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"* OK"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("dovecot did not greet within 15 s")
