"""The local lab: a real Prosody (XMPP) and a real Kamailio (SIP) on 127.0.0.1, for tests and the simulator.

    with Lab() as lab:                      # demo users alice, bob, echo with random passwords
        lab.users["alice"]                  # her password (the same on both servers)
        lab.xmpp.host, lab.xmpp.port        # STARTTLS c2s port; trust lab.xmpp.ca_path
        lab.xmpp.jid("alice")               # "alice@byline.lab"
        lab.sip.registrar_uri               # "sip:127.0.0.1:PORT"
        lab.sip.uri("bob")                  # "sip:bob@127.0.0.1:PORT": register as it, call it
        lab.echo_uri                        # "sip:echo@127.0.0.1:PORT": the demo contact, see below
        lab.chat_echo_jid                   # "echo@byline.lab": the same contact for chat

With a user named ``echo`` (as among the demo users) the lab also runs the demo contact "echo",
so a newcomer can place a secure call or chat with no account of their own:

- with SIP, the echo phone (lab/echo_phone.py): a headless phone built from the firmware's call
  modules, registered as ``echo``, that answers every ZRTP call (and refuses calls without ZRTP
  with 488) and plays the caller's audio back 200 ms late;
- with XMPP, the chat echo (lab/chat_echo.py): logged in as ``echo`` with the firmware's chat
  modules, it accepts every subscription (and subscribes back), answers each OTR message "TEXT"
  with "echo: TEXT" inside the OTR session (never in plaintext: a plaintext message gets an OTR
  query), and answers every SMP with the secret ``byline`` (ask it anything; its answer is always
  'byline'). Its OTR key is kept in the lab directory (``chat-echo-state/``), so a kept lab keeps
  its fingerprint.

``Lab(echo=False)`` leaves both out; then ``echo`` is an ordinary user like the others.

``stop_xmpp()`` and ``start_xmpp()`` stop Prosody and start it again on the same port (its
accounts, rosters and offline messages kept), for tests of clients that lose their server.

Both servers listen on free ports of 127.0.0.1 and keep their configuration, data and logs in
the lab directory. They (and the echo contacts) are stopped by ``stop()`` (or leaving the ``with``
block), and also when the Python process that started them dies (see lab/processes.py for the one
exception). The lab never writes to stdout or stderr: it reports through ``logging`` (logger
``lab``), and its errors are ``LabError`` (servers that fail to start, with their log tail) or
``ValueError`` (bad user names or passwords).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from lab.certs import create_certificates
from lab.kamailio import KamailioServer, SipService
from lab.processes import LOG_TAIL_LINES, LOOPBACK, LabError, ManagedProcess
from lab.prosody import ProsodyServer, XmppService
from lab.users import check_user, new_password

__all__ = ["DEMO_USERS", "DEFAULT_DOMAIN", "ECHO_USER", "Lab", "LabError", "SipService", "XmppService"]

log = logging.getLogger(__name__)

DEMO_USERS = ("alice", "bob", "echo")
ECHO_USER = "echo"
ECHO_READY_LINE = "echo phone ready"  # lab.echo_phone.READY_LINE (not imported here: it loads pjsua2)
ECHO_READY_TIMEOUT_SECONDS = 10.0
CHAT_ECHO_READY_LINE = "chat echo ready"  # lab.chat_echo.READY_LINE (not imported here: it loads slixmpp)
CHAT_ECHO_STATE_DIRECTORY = "chat-echo-state"  # in the lab directory: its OTR key and instance tag
REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_DOMAIN = "byline.lab"
DOMAIN_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
TEMPORARY_DIRECTORY_PREFIX = "byline-lab-"


class Lab:
    """Prosody and/or Kamailio sharing one set of users, started by ``start()`` or ``with``.

    ``users`` is a list of names (each gets a random password) or a mapping name -> password.
    ``xmpp`` / ``sip`` choose the servers; ``echo`` the demo contact (only with a user named ``echo``):
    its echo phone with SIP, its chat echo with XMPP (each adds a fraction of a second to ``start()``;
    a kept directory keeps the chat echo's OTR key). ``directory`` holds everything and is
    kept (reused, it keeps Prosody's accounts and data from earlier runs; the lab's users get their
    passwords set anew); without it the lab makes a temporary directory and deletes it, logs included, on
    ``stop()``. ``start()`` blocks for about half a second: from asyncio, run it in a thread.
    """

    def __init__(
        self,
        users: Iterable[str] | Mapping[str, str] = DEMO_USERS,
        *,
        xmpp: bool = True,
        sip: bool = True,
        domain: str = DEFAULT_DOMAIN,
        directory: Path | str | None = None,
        echo: bool = True,
    ):
        if not DOMAIN_PATTERN.match(domain):
            raise ValueError(f"lab domain {domain!r} must be a DNS name of a-z 0-9 . - (like {DEFAULT_DOMAIN!r})")
        if not (xmpp or sip):
            raise ValueError("a lab needs at least one server: xmpp=True or sip=True")
        if isinstance(users, str):
            raise ValueError(f"users must be a list of names or a mapping name -> password, not the string {users!r}")
        passwords = dict(users) if isinstance(users, Mapping) else {name: new_password() for name in users}
        for name, password in passwords.items():
            check_user(name, password)
        self._passwords = passwords
        self._want_xmpp = xmpp
        self._want_sip = sip
        self._want_echo = echo and sip and ECHO_USER in passwords
        self._want_chat_echo = echo and xmpp and ECHO_USER in passwords
        self.domain = domain
        self._given_directory = Path(directory) if directory is not None else None
        self._directory: Path | None = None
        self._prosody: ProsodyServer | None = None
        self._kamailio: KamailioServer | None = None
        self._echo: ManagedProcess | None = None
        self._chat_echo: ManagedProcess | None = None
        self._started = False

    @property
    def users(self) -> Mapping[str, str]:
        """User name -> password, read-only; every user exists on every server of the lab."""
        return MappingProxyType(self._passwords)

    @property
    def directory(self) -> Path:
        """The lab directory (configuration, data, certificates, logs); ``LabError`` before ``start()``."""
        if self._directory is None:
            raise LabError("the lab has no directory before start()")
        return self._directory

    @property
    def xmpp(self) -> XmppService:
        """Where the XMPP server is; ``LabError`` unless the lab runs with ``xmpp=True``."""
        if self._prosody is None or self._prosody.service is None:
            raise LabError("this lab runs no XMPP server (start it, with xmpp=True)")
        return self._prosody.service

    @property
    def sip(self) -> SipService:
        """Where the SIP server is; ``LabError`` unless the lab runs with ``sip=True``."""
        if self._kamailio is None or self._kamailio.service is None:
            raise LabError("this lab runs no SIP server (start it, with sip=True)")
        return self._kamailio.service

    @property
    def echo_uri(self) -> str:
        """The demo contact's address (``sip:echo@127.0.0.1:PORT``); ``LabError`` unless the echo phone runs."""
        if self._echo is None or not self._started:
            raise LabError("this lab runs no echo phone (start it, with sip=True, echo=True and a user 'echo')")
        return self.sip.uri(ECHO_USER)

    @property
    def echo_process(self) -> ManagedProcess | None:
        """The echo phone's process (running or stopped), or None when the lab has none."""
        return self._echo

    @property
    def chat_echo_jid(self) -> str:
        """The demo contact's chat address (``echo@DOMAIN``); ``LabError`` unless the chat echo runs."""
        if self._chat_echo is None or not self._started:
            raise LabError("this lab runs no chat echo (start it, with xmpp=True, echo=True and a user 'echo')")
        return self.xmpp.jid(ECHO_USER)

    @property
    def chat_echo_process(self) -> ManagedProcess | None:
        """The chat echo's process (running or stopped), or None when the lab has none."""
        return self._chat_echo

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        """The server processes started so far (running or stopped), for PIDs and log tails.

        The echo contacts are not servers: they are ``echo_process`` and ``chat_echo_process``.
        After ``start_xmpp()`` the Prosody process is the new one.
        """
        servers = (self._prosody, self._kamailio)
        return tuple(server.process for server in servers if server is not None and server.process is not None)

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> Lab:
        """Start the chosen servers and return once they answer; ``LabError`` (after cleaning up) if one fails."""
        if self._started:
            raise LabError("the lab was already started")
        self._started = True
        try:
            self._directory = self._make_directory()
            if self._want_xmpp:
                self._start_prosody()
                if self._want_chat_echo:
                    self._start_chat_echo()
            if self._want_sip:
                self._kamailio = KamailioServer(self._directory, self._passwords)
                self._kamailio.start()
                if self._want_echo:
                    self._start_echo()
        except BaseException:
            self.stop()
            raise
        log.info("lab ready in %s: %s", self._directory, self._summary())
        return self

    def stop(self) -> None:
        """Stop every server (by process group) and delete a temporary directory; safe to repeat."""
        if not self._started:
            return
        if self._chat_echo is not None:
            self._chat_echo.stop()  # first: it logs out of the Prosody still running
        if self._echo is not None:
            self._echo.stop()  # before Kamailio: it un-REGISTERs there
        for server in (self._kamailio, self._prosody):
            if server is not None:
                server.stop()
        if self._given_directory is None and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._started = False
        log.info("lab stopped")

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` log lines of every server and echo contact, one block each ("" before any started).

        Prosody's block covers its current run only (since the last ``start_xmpp()``)."""
        contacts = [process for process in (self._echo, self._chat_echo) if process is not None]
        return "\n".join(process.log_tail(lines) for process in (*self.processes, *contacts))

    def stop_xmpp(self) -> None:
        """Stop Prosody (its clients lose their sessions) until ``start_xmpp()``; nothing if it is stopped."""
        self._running_prosody().stop()
        log.info("XMPP server stopped (port %d kept for start_xmpp)", self.xmpp.port)

    def start_xmpp(self) -> XmppService:
        """Start Prosody again after ``stop_xmpp()``, on the same port with the same accounts, rosters and
        offline messages; returns once it answers (nothing if it runs). ``LabError`` if it cannot."""
        service = self._running_prosody().start_again()
        log.info("XMPP server running again at %s:%d", service.host, service.port)
        return service

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _make_directory(self) -> Path:
        if self._given_directory is None:
            return Path(tempfile.mkdtemp(prefix=TEMPORARY_DIRECTORY_PREFIX))
        self._given_directory.mkdir(parents=True, exist_ok=True)
        return self._given_directory

    def _start_prosody(self) -> None:
        certificates = create_certificates(self._directory / "certs", [self.domain, "localhost", LOOPBACK])
        self._prosody = ProsodyServer(self._directory, self.domain, certificates)
        for name, password in self._passwords.items():
            self._prosody.register(name, password)
        self._prosody.start()

    def _running_prosody(self) -> ProsodyServer:
        if self._prosody is None or self._prosody.service is None or not self._started:
            raise LabError("this lab runs no XMPP server (start it, with xmpp=True)")
        return self._prosody

    def _start_echo(self) -> None:
        """The echo phone, registered at our Kamailio; returns once it says it is ready."""
        self._echo = self._start_contact("echo phone", "echo", ECHO_READY_LINE, [
            "lab.echo_phone",
            "--registrar", self.sip.registrar_uri,
            "--user", ECHO_USER,
        ])

    def _start_chat_echo(self) -> None:
        """The chat echo, logged in at our Prosody; returns once it says it is ready."""
        xmpp = self.xmpp
        self._chat_echo = self._start_contact("chat echo", "chat-echo", CHAT_ECHO_READY_LINE, [
            "lab.chat_echo",
            "--jid", xmpp.jid(ECHO_USER),
            "--host", xmpp.host,
            "--port", str(xmpp.port),
            "--ca", str(xmpp.ca_path),
            "--state-dir", str(self._directory / CHAT_ECHO_STATE_DIRECTORY),
        ])

    def _start_contact(self, name: str, file_stem: str, ready_line: str, module_arguments: list[str]) -> ManagedProcess:
        """``python -m MODULE ARGS --password-file F --log L`` as process ``name``, once it printed
        ``ready_line``; one that fails to start is stopped here (its log tail is in the ``LabError``)."""
        password_path = self._directory / f"{file_stem}.password"
        password_path.unlink(missing_ok=True)  # a kept directory: a fresh file, created 0600
        descriptor = os.open(password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as password_file:
            password_file.write(self._passwords[ECHO_USER] + "\n")
        log_path = self._directory / f"{file_stem}.log"
        python_path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
        process = ManagedProcess(
            name,
            [
                sys.executable, "-m", *module_arguments,
                "--password-file", str(password_path),
                "--log", str(log_path),  # its log lines; its standard output and errors join them there
            ],
            cwd=self._directory,
            log_path=log_path,
            env={**os.environ, "PYTHONPATH": python_path},
        )
        try:
            process.start()
            process.wait_ready(lambda: ready_line in process.log_text(), ECHO_READY_TIMEOUT_SECONDS)
        except BaseException:
            process.stop()
            raise
        finally:
            password_path.unlink(missing_ok=True)  # read by now (or never needed again)
        return process

    def _summary(self) -> str:
        parts = []
        if self._prosody is not None:
            parts.append(f"XMPP {self.xmpp.domain} at {self.xmpp.host}:{self.xmpp.port}")
        if self._kamailio is not None:
            parts.append(f"SIP at {self.sip.host}:{self.sip.port}")
        if self._echo is not None:
            parts.append("echo phone registered")
        if self._chat_echo is not None:
            parts.append("chat echo logged in")
        parts.append(f"users {', '.join(self._passwords)}")
        return "; ".join(parts)
