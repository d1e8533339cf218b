"""The lab's demo contact "echo": a headless phone that answers every secure call and echoes it.

    python -m lab.echo_phone --registrar sip:127.0.0.1:PORT --user echo --password-file FILE [--log FILE]

It is built only from the firmware's own call modules: ``SipAgent`` (signalling), one
``MediaSession`` per call (ZRTP, SRTP, codecs) and an in-memory ``ZidCache``. It registers as
USER at the registrar (the address of record is USER@registrar-host:port, as in the lab), prints
``READY_LINE`` on standard output once the registrar accepted it, then:

- answers every call at once, one at a time: a second caller gets 486 Busy Here;
- requires ZRTP: an offer without ``a=zrtp-hash`` is refused with 488 before anything else, and a
  call that goes clear or fails ZRTP is hung up;
- once the call is connected, a task calls ``media.exchange`` every 20 ms with what it received
  ``--delay-ms`` ago (200 ms by default), so the caller hears themselves; nothing is sent
  before SRTP is keyed (the media session's rule);
- hangs up after ``--max-call-seconds`` (10 minutes by default), or ends when the caller does.

The password never appears on the command line: it is read from ``--password-file`` (``-`` for
standard input; only the first line counts). The log (``--log``, else standard error) follows
the firmware's habit: calls are "call-N", no address, URI or SAS is written. SIGTERM or SIGINT
stops it cleanly (the call's media closed, the agent hung up and unregistered) with exit code 0;
a registration that fails or takes longer than ``--register-timeout`` exits with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections import deque
from dataclasses import dataclass

from firmware.calls.media import MediaFailed, MediaNotEncrypted, MediaSecure, MediaSession, route_address
from firmware.calls.sip import (
    CallEnded,
    CallProgress,
    IncomingCall,
    MediaOffer,
    Registered,
    RemoteMediaChanged,
    SipAccountConfig,
    SipAgent,
    SipError,
    split_name_addr,
)
from firmware.calls.zrtp import ZidCache
from lab.users import read_password

log = logging.getLogger("lab.echo_phone")

READY_LINE = "echo phone ready"
"""Printed (and flushed) on standard output once registered: the lab waits for it."""
ACCOUNT_ID = "echo"
RATE = 16000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2
SILENCE = bytes(FRAME_BYTES)
DEFAULT_DELAY_MS = 200
DEFAULT_MAX_CALL_S = 600.0
DEFAULT_REGISTER_TIMEOUT_S = 10.0
MAX_LAG_S = 0.2
"""A loop later than this behind the 20 ms schedule starts a new schedule instead of catching up."""
NOT_ACCEPTABLE = 488
BUSY_HERE = 486
EXIT_OK, EXIT_REGISTRATION_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class _Call:
    call_id: str
    started: float
    media: MediaSession | None = None
    answered: bool = False
    connected: bool = False
    over: bool = False
    echo: asyncio.Task | None = None
    limit: asyncio.TimerHandle | None = None


class EchoPhone:
    """One registered account that answers ZRTP calls, one at a time, and echoes their audio."""

    def __init__(self, account: SipAccountConfig, *, bind_address: str, delay_ms: int = DEFAULT_DELAY_MS,
                 max_call_s: float = DEFAULT_MAX_CALL_S, register_timeout_s: float = DEFAULT_REGISTER_TIMEOUT_S):
        self.account = account
        self.bind_address = bind_address
        self.delay_frames = max(1, delay_ms // FRAME_MS)
        self.max_call_s = max_call_s
        self.register_timeout_s = register_timeout_s
        self.agent: SipAgent | None = None
        self.zid_cache: ZidCache | None = None
        self.calls_answered = 0
        self._call: _Call | None = None
        self._registered: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> int:
        """Register, print ``READY_LINE``, answer calls until ``stop`` is set; the exit code."""
        self._loop = asyncio.get_running_loop()
        self._registered = self._loop.create_future()
        self.zid_cache = ZidCache(None)
        self.agent = SipAgent(self._on_sip, bind_address=self.bind_address, sip_port=0)
        try:
            self.agent.start()
            self.agent.add_account(self.account)
            if not await self._wait_registered(stop):
                return EXIT_REGISTRATION_FAILED if not stop.is_set() else EXIT_OK
            print(READY_LINE, flush=True)
            await stop.wait()
            log.info("stopping")
            return EXIT_OK
        finally:
            if self._call is not None:
                self._release(self._call)
            self.agent.stop()
            self.zid_cache.close()
            log.info("echo phone stopped after answering %d call(s)", self.calls_answered)

    async def _wait_registered(self, stop: asyncio.Event) -> bool:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({self._registered, stopping}, timeout=self.register_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if self._registered in done:
            event: Registered = self._registered.result()
            if event.ok:
                log.info("registered: ready for calls")
                return True
            log.error("registration refused: %s %s", event.code, event.reason)
            return False
        if not stop.is_set():
            log.error("no answer to REGISTER within %.0f s", self.register_timeout_s)
        return False

    # SIP events, on the loop.

    def _on_sip(self, event) -> None:
        if isinstance(event, Registered):
            if not self._registered.done():
                self._registered.set_result(event)
            elif event.ok:
                log.info("registered again")
            else:
                log.warning("registration lost: %s %s (pjsua retries)", event.code, event.reason)
        elif isinstance(event, IncomingCall):
            self._incoming(event)
        elif isinstance(event, CallProgress):
            call = self._current(event.call_id)
            if call is not None and event.state == "connected" and not call.connected:
                self._connected(call)
        elif isinstance(event, RemoteMediaChanged):
            call = self._current(event.call_id)
            if call is not None and call.media is not None:
                remote = event.remote_media
                call.media.set_remote(remote.address, remote.rtp_port, remote.payload_types, remote.zrtp_hash)
        elif isinstance(event, CallEnded):
            call = self._current(event.call_id)
            if call is not None:
                log.info("%s ended after %.1f s: %s", call.call_id, self._loop.time() - call.started, event.code)
                self._release(call)

    def _current(self, call_id: str) -> _Call | None:
        call = self._call
        return call if call is not None and call.call_id == call_id else None

    def _incoming(self, event: IncomingCall) -> None:
        remote = event.remote_media
        if remote is None or remote.zrtp_hash is None:
            log.info("%s: the caller offers no ZRTP: refused %d", event.call_id, NOT_ACCEPTABLE)
            self._quietly(self.agent.reject, event.call_id, NOT_ACCEPTABLE, "ZRTP required")
            return
        if self._call is not None:
            log.info("%s: busy with %s: refused %d", event.call_id, self._call.call_id, BUSY_HERE)
            self._quietly(self.agent.reject, event.call_id, BUSY_HERE, "Busy Here")
            return
        call = _Call(event.call_id, self._loop.time())
        self._call = call  # taken now: a second INVITE while the media opens is busy too
        log.info("%s: incoming call with ZRTP: answering", call.call_id)
        self._spawn(call, self._answer(call, event))

    async def _answer(self, call: _Call, event: IncomingCall) -> None:
        remote = event.remote_media
        peer_uri = split_name_addr(event.remote_uri)[1].split(";", 1)[0] or "sip:unknown"
        media = MediaSession(bind_address=self.bind_address, zid_cache=self.zid_cache, self_uri=self.account.uri,
                             peer_uri=peer_uri, on_event=lambda media_event: self._on_media(call, media_event),
                             device_rate=RATE, allow_plain=False)
        try:
            await media.open()
        finally:
            if call.over:  # the caller gave up (or the phone stops) while the sockets opened
                media.close()
        if call.over:
            return
        call.media = media
        media.set_remote(remote.address, remote.rtp_port, remote.payload_types, remote.zrtp_hash)
        if call.over:  # no codec in common: _on_media refused it
            return
        self.agent.answer(call.call_id, MediaOffer(media.rtp_port, media.rtcp_port, media.bind_address,
                                                   media.zrtp_hash))
        call.answered = True
        self.calls_answered += 1

    def _connected(self, call: _Call) -> None:
        call.connected = True
        call.media.start()
        call.limit = self._loop.call_later(self.max_call_s, self._limit_reached, call)
        call.echo = self._spawn(call, self._echo(call))
        log.info("%s connected after %.2f s: ZRTP started", call.call_id, self._loop.time() - call.started)

    def _limit_reached(self, call: _Call) -> None:
        if self._call is call:
            log.info("%s: %.0f s reached: hanging up", call.call_id, self.max_call_s)
            self._quietly(self.agent.hangup, call.call_id)

    def _on_media(self, call: _Call, event) -> None:
        if self._call is not call:
            return
        if isinstance(event, MediaSecure):
            log.info("%s: secure after %.2f s (%s, %s, %s); echoing with %d ms delay", call.call_id,
                     self._loop.time() - call.started, event.cipher, event.auth_tag, event.key_agreement,
                     self.delay_frames * FRAME_MS)
        elif isinstance(event, MediaNotEncrypted | MediaFailed):
            log.info("%s: %s: hanging up", call.call_id, event.reason)
            if call.answered:
                self._quietly(self.agent.hangup, call.call_id)
            else:
                self._quietly(self.agent.reject, call.call_id, NOT_ACCEPTABLE, "No usable media")
                self._release(call)

    # Audio: what was received DELAY ago is what is sent now.

    async def _echo(self, call: _Call) -> None:
        media = call.media
        delayed: deque[bytes] = deque([SILENCE] * self.delay_frames)
        period = FRAME_MS / 1000
        due = self._loop.time()
        while not media.closed:
            due += period
            wait = due - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif -wait > MAX_LAG_S:
                due = self._loop.time()  # the loop stalled: start afresh rather than burst
            played = media.exchange(delayed.popleft())
            delayed.append(played if played and len(played) == FRAME_BYTES else SILENCE)

    # Housekeeping.

    def _spawn(self, call: _Call, coroutine) -> asyncio.Task:
        task = self._loop.create_task(self._guarded(call, coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, call: _Call, coroutine) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or a caller's surprise costs this call, never the echo phone
            log.exception("%s failed: hanging up", call.call_id)
            if self._call is call and self.agent is not None and self.agent.running:
                if call.answered:
                    self._quietly(self.agent.hangup, call.call_id)
                else:
                    self._quietly(self.agent.reject, call.call_id, 500, "Server Internal Error")

    def _release(self, call: _Call) -> None:
        call.over = True
        if call.limit is not None:
            call.limit.cancel()
        if call.echo is not None and call.echo is not asyncio.current_task():
            call.echo.cancel()
        if call.media is not None:
            call.media.close()
        if self._call is call:
            self._call = None

    @staticmethod
    def _quietly(action, *args) -> None:
        try:
            action(*args)
        except SipError as error:  # the call ended meanwhile
            log.info("%s", error)


def registrar_hostport(registrar: str) -> str:
    """``host:port`` of a registrar URI like ``sip:127.0.0.1:5060`` (parameters dropped)."""
    return registrar.removeprefix("sips:").removeprefix("sip:").split(";", 1)[0]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.echo_phone", description=__doc__.splitlines()[0])
    parser.add_argument("--registrar", required=True, help="the registrar's URI, e.g. sip:127.0.0.1:5060")
    parser.add_argument("--user", default="echo", help="the user name to register as (default: %(default)s)")
    parser.add_argument("--password-file", required=True,
                        help="a file whose first line is the password ('-': standard input)")
    parser.add_argument("--log", help="the log file (default: standard error)")
    parser.add_argument("--bind-address", help="the address for SIP and media (default: the one that reaches "
                                               "the registrar)")
    parser.add_argument("--delay-ms", type=int, default=DEFAULT_DELAY_MS,
                        help="how late the caller hears themselves, in ms (default: %(default)s)")
    parser.add_argument("--max-call-seconds", type=float, default=DEFAULT_MAX_CALL_S,
                        help="hang up a call after this long (default: %(default)s)")
    parser.add_argument("--register-timeout", type=float, default=DEFAULT_REGISTER_TIMEOUT_S,
                        help="give up when not registered after this long, in s (default: %(default)s)")
    return parser.parse_args(argv)


async def _run(phone: EchoPhone) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await phone.run(stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(filename=args.log, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        password = read_password(args.password_file)
        account = SipAccountConfig(ACCOUNT_ID, f"{args.user}@{registrar_hostport(args.registrar)}", password,
                                   registrar=args.registrar)
    except (OSError, ValueError, SipError) as error:
        log.error("cannot start: %s", error)
        print(f"echo phone: {error}", file=sys.stderr)
        return EXIT_USAGE
    host = registrar_hostport(args.registrar).rsplit(":", 1)[0]
    phone = EchoPhone(account, bind_address=args.bind_address or route_address(host), delay_ms=args.delay_ms,
                      max_call_s=args.max_call_seconds, register_timeout_s=args.register_timeout)
    return asyncio.run(_run(phone))


if __name__ == "__main__":
    sys.exit(main())
