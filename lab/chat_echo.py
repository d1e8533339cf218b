"""The lab's demo chat contact "echo": an XMPP account that answers every OTR message with "echo: TEXT".

    python -m lab.chat_echo --jid echo@DOMAIN --host H --port P --ca CA_PEM --password-file FILE
                            [--log FILE] [--state-dir DIR]

It is built only from the firmware's own chat modules: ``XmppClient`` (STARTTLS verified against
``--ca``, reconnection with backoff) and ``OtrAccount`` (OTR v3, encryption required), glued as
the phone glues them (``MessageReceived`` -> ``otr.receiving``; what OTR injects -> ``client.send``).
It logs in, prints ``READY_LINE`` on standard output once connected, then:

- accepts every subscription request and asks back (``add_contact``), so both rosters end with
  subscription "both";
- answers each decrypted message "TEXT" inside the OTR session with "echo: TEXT" (to the
  instance and resource the message came from). A plaintext message is never answered in
  plaintext: the bot sends an OTR query instead (at most one per peer every
  ``QUERY_INTERVAL_S``);
- answers every SMP, with or without a question, with ``LAB_SMP_SECRET``: ask the echo contact
  anything; its answer is always 'byline'. The right answer verifies it, any other fails;
- with ``--state-dir``, keeps its OTR private key and instance tag there (files ``otr-key`` and
  ``otr-instag``, mode 0600), so a lab kept between runs keeps the bot's fingerprint; without
  it, a fresh key every run.

No peer message can end it: every handler logs its exception and carries on. The password never
appears on the command line: it is read from ``--password-file`` (``-``: standard input; only the
first line counts). The log (``--log``, else standard error) holds no message text. SIGTERM or
SIGINT stops it cleanly (the XMPP session closed) with exit code 0; a refused password or
certificate exits with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from firmware.chat.otr import (
    Encrypted,
    Ended,
    OtrAccount,
    OtrError,
    OtrFailure,
    SmpQuestion,
    SmpRequest,
    SmpResult,
    Unencrypted,
)
from firmware.chat.xmpp import (
    AuthFailed,
    Connected,
    Disconnected,
    MessageReceived,
    SubscriptionRequest,
    TlsFailed,
    XmppAccountConfig,
    XmppClient,
    XmppError,
)
from lab.users import read_password

log = logging.getLogger("lab.chat_echo")

READY_LINE = "chat echo ready"
"""Printed (and flushed) on standard output once logged in: the lab waits for it."""
LAB_SMP_SECRET = "byline"
"""Ask the echo contact anything; its answer is always 'byline' (its SMP secret)."""
REPLY_PREFIX = "echo: "
RESOURCE = "echo"
KEY_FILE = "otr-key"
INSTAG_FILE = "otr-instag"
STATE_FILE_MODE = 0o600
QUERY_INTERVAL_S = 2.0
"""A peer that keeps sending plaintext gets at most one OTR query per this interval."""
POLL_CHECK_S = 1.0
EXIT_OK, EXIT_LOGIN_FAILED, EXIT_USAGE = 0, 1, 2


class ChatEcho:
    """One XMPP account with OTR that echoes what it decrypts, until ``stop`` is set."""

    def __init__(self, config: XmppAccountConfig, *, state_dir: Path | None = None):
        self.config = config
        self.state_dir = state_dir
        self.client: XmppClient | None = None
        self.otr: OtrAccount | None = None
        self.messages_echoed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: asyncio.Event | None = None
        self._ready = False
        self._unencrypted: list[str] = []  # Unencrypted events during one otr.receiving call
        self._last_query: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> int:
        """Log in, print ``READY_LINE``, echo until ``stop`` is set (or the login is refused); the exit code."""
        self._loop = asyncio.get_running_loop()
        self._failed = asyncio.Event()
        self.otr = self._open_otr()
        log.info("OTR fingerprint %s, instance tag 0x%08x", self.otr.fingerprint(), self.otr.instance_tag)
        self.client = XmppClient(self.config, self._on_xmpp)
        poller = self._loop.create_task(self._poll_otr())
        try:
            self.client.start()
            stopping = asyncio.ensure_future(stop.wait())
            failing = asyncio.ensure_future(self._failed.wait())
            try:
                await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                failing.cancel()
            if self._failed.is_set() and not stop.is_set():
                return EXIT_LOGIN_FAILED
            log.info("stopping")
            return EXIT_OK
        finally:
            poller.cancel()
            for task in list(self._tasks):
                task.cancel()
            await self.client.stop()
            self.otr.close()
            log.info("chat echo stopped after echoing %d message(s)", self.messages_echoed)

    # OTR state: a key and instance tag kept in --state-dir, or fresh ones.

    def _open_otr(self) -> OtrAccount:
        key, instag = self._load_state()
        otr = OtrAccount(self.config.jid, private_key=key, instance_tag=instag, fingerprints=None,
                         send=self._send_wire, on_event=self._on_otr)
        if key is None:
            otr.generate_key()
        if self.state_dir is not None and (key is None or instag is None):
            private_key, tag, _ = otr.export_state()
            self.state_dir.mkdir(parents=True, exist_ok=True)
            _write_private(self.state_dir / KEY_FILE, private_key)
            _write_private(self.state_dir / INSTAG_FILE, f"{tag:08x}\n".encode())
            log.info("OTR key and instance tag kept in %s", self.state_dir)
        return otr

    def _load_state(self) -> tuple[bytes | None, int | None]:
        """The kept key and instance tag (None for what is missing or unusable: made anew)."""
        if self.state_dir is None:
            return None, None
        key, instag = None, None
        try:
            key_path, instag_path = self.state_dir / KEY_FILE, self.state_dir / INSTAG_FILE
            if key_path.is_file():
                key = key_path.read_bytes()
            if instag_path.is_file():
                instag = int(instag_path.read_text().strip(), 16)
            probe = OtrAccount(self.config.jid, private_key=key, instance_tag=instag, fingerprints=None,
                               send=lambda _to, _text: None, on_event=lambda _event: None)
            probe.close()
        except (OSError, ValueError, OtrFailure) as error:
            log.warning("the kept OTR state in %s is unusable (%s): making a new key", self.state_dir, error)
            return None, None
        return key or None, instag

    async def _poll_otr(self) -> None:
        """libotr's periodic clean-up of old keys, whenever it asks for it (``poll_interval``)."""
        waited = 0.0
        while True:
            await asyncio.sleep(POLL_CHECK_S)
            waited += POLL_CHECK_S
            interval = self.otr.poll_interval
            if interval and waited >= interval:
                waited = 0.0
                try:
                    self.otr.poll()
                except Exception:
                    log.exception("OTR poll failed")

    # XMPP events, on the loop.

    def _on_xmpp(self, event) -> None:
        try:
            if isinstance(event, MessageReceived):
                self._on_message(event)
            elif isinstance(event, SubscriptionRequest):
                self._on_subscription_request(event.jid)
            elif isinstance(event, Connected):
                if not self._ready:
                    self._ready = True
                    log.info("logged in: ready for chats")
                    print(READY_LINE, flush=True)
                else:
                    log.info("logged in again")
            elif isinstance(event, Disconnected):
                log.info("disconnected (%s)", event.reason)
            elif isinstance(event, AuthFailed | TlsFailed):
                log.error("cannot log in: %s", "password refused" if isinstance(event, AuthFailed) else event.reason)
                self._failed.set()
        except Exception:  # a peer's surprise costs that one event, never the bot
            log.exception("handling %s failed", type(event).__name__)

    def _on_message(self, event: MessageReceived) -> None:
        self._unencrypted.clear()
        shown = self.otr.receiving(event.from_jid, event.body)
        plaintext_came = bool(self._unencrypted)
        self._unencrypted.clear()
        if plaintext_came or not event.body.startswith("?OTR:"):
            return  # a plaintext message (answered with a query), or an OTR control message
        if not shown or not shown.strip() or self.otr.state(event.from_jid) != "encrypted":
            return
        peer = event.from_jid.split("/", 1)[0]
        wire = self.otr.sending(peer, REPLY_PREFIX + shown)
        if wire is not None:
            self._send_wire(self.otr.route(peer), wire)
            self.messages_echoed += 1

    def _on_subscription_request(self, jid: str) -> None:
        self.client.authorize(jid)
        item = next((item for item in self.client.roster if item.jid == jid), None)
        if item is None or (item.subscription not in ("to", "both") and item.ask != "subscribe"):
            self._spawn(self.client.add_contact(jid), "asking back for the subscription")
        log.info("subscription accepted")

    # OTR events and messages, after libotr returned.

    def _send_wire(self, to: str, text: str) -> None:
        try:
            self.client.send(to, text)
        except XmppError as error:
            log.warning("not sent: %s", error)

    def _on_otr(self, event) -> None:
        try:
            if isinstance(event, Unencrypted):
                self._unencrypted.append(event.peer)
                self._query(event.peer)
            elif isinstance(event, SmpQuestion | SmpRequest):
                log.info("SMP asked (%s): answering", "with a question" if isinstance(event, SmpQuestion) else "secret")
                self.otr.smp_respond(event.peer, LAB_SMP_SECRET, instance=event.instance or None)
            elif isinstance(event, SmpResult):
                log.info("SMP %s", "succeeded" if event.success else "failed")
            elif isinstance(event, Encrypted):
                log.info("private conversation started (instance 0x%08x)", event.instance)
            elif isinstance(event, Ended):
                log.info("private conversation ended (instance 0x%08x)", event.instance)
            elif isinstance(event, OtrError):
                log.info("OTR: %s", event.message)
        except Exception:
            log.exception("handling %s failed", type(event).__name__)

    def _query(self, peer: str) -> None:
        now = self._loop.time()
        if now - self._last_query.get(peer, -QUERY_INTERVAL_S) < QUERY_INTERVAL_S:
            return
        self._last_query[peer] = now
        log.info("a plaintext message: starting OTR instead of answering")
        self.otr.start(peer)

    # Housekeeping.

    def _spawn(self, coroutine, what: str) -> None:
        async def guarded():
            try:
                await coroutine
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", what)

        task = self._loop.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _write_private(path: Path, data: bytes) -> None:
    """``data`` into ``path``, created 0600 (a temporary file renamed over it)."""
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STATE_FILE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.chat_echo", description=__doc__.splitlines()[0])
    parser.add_argument("--jid", required=True, help="the bare JID to log in as, e.g. echo@byline.lab")
    parser.add_argument("--host", help="the server's address (default: the JID's domain)")
    parser.add_argument("--port", type=int, default=5222, help="its STARTTLS c2s port (default: %(default)s)")
    parser.add_argument("--ca", help="the CA (PEM) to verify the server against (default: the system's)")
    parser.add_argument("--password-file", required=True,
                        help="a file whose first line is the password ('-': standard input)")
    parser.add_argument("--log", help="the log file (default: standard error)")
    parser.add_argument("--state-dir", type=Path,
                        help=f"keep the OTR key and instance tag here ({KEY_FILE}, {INSTAG_FILE}; default: a new "
                             "key every run)")
    return parser.parse_args(argv)


async def _run(bot: ChatEcho) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await bot.run(stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(filename=args.log, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = XmppAccountConfig(args.jid, read_password(args.password_file), host=args.host, port=args.port,
                                   ca_path=args.ca, resource=RESOURCE)
    except (OSError, ValueError, XmppError) as error:
        log.error("cannot start: %s", error)
        print(f"chat echo: {error}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_run(ChatEcho(config, state_dir=args.state_dir)))


if __name__ == "__main__":
    sys.exit(main())
