"""The calls unit: SIP accounts from the profile, calls placed and answered, ZRTP-keyed media.

Contract:

- ``start`` starts the SIP agent (one pjsua2 endpoint for the process); if it cannot start, the
  unit is disabled with the reason (DeviceError naming ``calls``), and the phone runs without calls.
- ``show(state)`` keeps the agent's accounts equal to the SIP accounts of the unlocked profile
  that have a password (added, changed, removed); registration results come back as
  AccountStatus events. A phone that is wiped or factory fresh has no accounts and no calls.
- Requests (PlaceCall, AnswerCall, EndCall, VerifySas) are performed on the loop; every change of
  a call is posted as a CallChanged with a whole CallView. The security shown follows the media
  exactly: pending until ZRTP is done, then secure / verified / key_changed; a peer without ZRTP
  is refused (488 / hang-up with the reason) unless the account allows plain calls, and then
  it is shown as not_encrypted for the whole call. Encryption lost during a call (GoClear, or a
  re-INVITE without ZRTP) is shown at once and, where plain calls are not allowed, ends the call.
- The ZID cache (bzrtp's SQLite) lives in memory and is saved into the encrypted store after a
  SAS decision and at the end of each call.
- A call's audio goes through ``AudioRoute``: the audio unit's 20 ms loop exchanges frames with
  the connected call's media session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from drivers.errors import DeviceError
from firmware import effects as fx
from firmware.calls.media import MediaFailed, MediaNotEncrypted, MediaSecure, MediaSession, route_address
from firmware.calls.sip import (CallEnded, CallProgress, IncomingCall, MediaOffer, Registered, RemoteMedia,
                                RemoteMediaChanged, SipAccountConfig, SipAgent, SipError, split_name_addr)
from firmware.calls.zrtp import ZidCache
from firmware.config import Config
from firmware.profile import Account
from firmware.state import PhoneState
from firmware.store import StoreError
from firmware.store_unit import StoreAccess
from firmware.units import AudioRoute, GuardedTasks, Unit

log = logging.getLogger(__name__)

ZID_CACHE_RECORD = "zrtp-zid-cache"
NETWORK_CHECK_S = 5.0
"""How often the route to each account's server is looked at: a new local address (another
network, a new DHCP lease) re-registers the account at once instead of waiting for pjsua's
next refresh, so calls reach the phone where it now is."""
NOT_ACCEPTABLE = 488
BUSY_HERE = 486


@dataclass
class _Call:
    view: fx.CallView
    account: Account
    media: MediaSession
    remote: RemoteMedia | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class CallsUnit(Unit):
    name = "calls"
    section = "calls"
    performs = fx.CALL_EFFECTS

    def __init__(self, config: Config, store: StoreAccess, audio: AudioRoute):
        self._config = config
        self._store = store
        self._audio = audio
        self._post: Callable[[object], None] | None = None
        self._agent: SipAgent | None = None
        self._accounts: dict[str, Account] = {}
        self._calls: dict[str, _Call] = {}
        self._zid_cache: ZidCache | None = None
        self._tasks = GuardedTasks("calls: a request")
        self._history_on = False
        self._log_loaded = False
        self._routes: dict[str, str] = {}
        self.route = route_address

    def start(self, post: Callable[[object], None]) -> None:
        self._post = post
        # no socket until an account needs one: a locked phone offers pjsua's parser to nobody
        self._agent = SipAgent(self._on_sip, bind_address=self._config["calls.bind_address"],
                               sip_port=self._config["calls.sip_port"], listen_udp=False)
        try:
            self._agent.start()
        except (SipError, OSError) as e:
            self._agent = None
            raise DeviceError("calls", "sip_port", str(e)) from None
        self._spawn(self._watch_network())

    def stop(self) -> None:
        self._tasks.cancel()
        self._audio.media = None
        for call in self._calls.values():
            call.media.close()
        self._calls.clear()
        self._save_zid_cache()
        if self._agent is not None:
            self._agent.stop()
            self._agent = None
        if self._zid_cache is not None:
            self._zid_cache.close()
            self._zid_cache = None

    # Accounts follow the profile.

    def show(self, state: PhoneState) -> None:
        self._history_on = state.settings.call_history and state.profile is not None
        if state.profile is not None and not self._log_loaded:
            self._log_loaded = True
            if self._history_on:
                self._load_call_log()
        elif state.profile is None:
            self._log_loaded = False
        wanted = {a.address: a for a in state.accounts if a.kind == "sip" and a.password} if state.profile else {}
        for address in [a for a in self._accounts if a not in wanted or wanted[a] != self._accounts[a]]:
            self._agent.remove_account(address)
            del self._accounts[address]
        for address, account in wanted.items():
            if address not in self._accounts:
                self._add_account(account)
        if state.profile is None and self._zid_cache is not None:
            self._zid_cache.close()  # wiped or locked at boot: nothing of the old phone stays in memory
            self._zid_cache = None

    def _add_account(self, account: Account) -> None:
        host = account.address.partition("@")[2]
        tls = account.transport == "tls"
        try:
            self._agent.add_account(SipAccountConfig(
                account.address, account.address, account.password, registrar=f"sip:{host}",
                transport=account.transport, tls_pin=account.tls_pin or None,
                ca_path=self._config["calls.ca_file"] if tls and not account.tls_pin else None))
        except SipError as e:
            self._post(fx.AccountStatus(account.address, f"failed: {e}"))
            return
        self._accounts[account.address] = account
        self._post(fx.AccountStatus(account.address, "registering"))

    async def _watch_network(self) -> None:
        while True:
            await asyncio.sleep(NETWORK_CHECK_S)
            self.check_network()

    def check_network(self) -> None:
        """Re-register every account whose server is now reached from another local address."""
        for address in list(self._accounts):
            local = self.route(_server_host(address))
            before = self._routes.get(address)
            self._routes[address] = local
            if before is not None and before != local:
                log.info("calls: the network changed (%s -> %s): registering again", before, local)
                account = self._accounts.pop(address)
                self._agent.remove_account(address)
                self._add_account(account)

    # Requests.

    def perform(self, request) -> None:
        handler = {fx.PlaceCall: self._place, fx.AnswerCall: self._answer, fx.EndCall: self._end,
                   fx.VerifySas: self._verify, fx.SendDtmf: self._dtmf, fx.HoldCall: self._hold,
                   fx.MuteCall: self._mute}[type(request)]
        self._spawn(handler(request))

    def _spawn(self, coroutine) -> None:
        self._tasks.spawn(coroutine)

    async def _place(self, request: fx.PlaceCall) -> None:
        account = self._accounts.get(request.account)
        if account is None:
            self._post(fx.CallChanged(fx.CallView("-", request.uri, False, "ended", reason="account not registered")))
            return
        media = await self._open_media(account, request.uri)
        call_id = self._agent.make_call(account.address, request.uri, self._offer(media))
        call = self._track(fx.CallView(call_id, _peer_name(request.uri), False, "calling"), account, media)
        self._publish(call)

    async def _answer(self, request: fx.AnswerCall) -> None:
        call = self._calls.get(request.call_id)
        if call is None or call.view.phase != "incoming":
            return
        await call.ready.wait()
        for other in self._calls.values():
            if other is not call and other.view.phase == "connected" and not other.view.held:
                await self._hold(fx.HoldCall(other.view.call_id, True))  # call waiting: the first one waits
        self._agent.answer(request.call_id, self._offer(call.media))
        self._update(call, answered=True)

    async def _end(self, request: fx.EndCall) -> None:
        call = self._calls.get(request.call_id)
        if call is None:
            return
        if call.view.phase == "incoming":
            self._update(call, reason="declined")
            self._agent.reject(request.call_id, BUSY_HERE, "Declined")
        else:
            self._agent.hangup(request.call_id)

    async def _verify(self, request: fx.VerifySas) -> None:
        call = self._calls.get(request.call_id)
        if call is None or call.view.security not in ("secure", "verified", "key_changed"):
            return
        call.media.set_sas_verified(request.verified)
        security = "verified" if request.verified else "key_changed"
        reason = "" if request.verified else "SAS did not match!"
        self._update(call, security=security, reason=reason)
        self._save_zid_cache()

    async def _dtmf(self, request: fx.SendDtmf) -> None:
        call = self._calls.get(request.call_id)
        if call is not None and not call.media.send_dtmf(request.digit):
            log.info("call %s: the other phone takes no key presses (no telephone-event)", request.call_id)

    async def _mute(self, request: fx.MuteCall) -> None:
        call = self._calls.get(request.call_id)
        if call is not None and call.view.phase == "connected":
            call.media.set_muted(request.mute)
            self._update(call, muted=request.mute)

    async def _hold(self, request: fx.HoldCall) -> None:
        call = self._calls.get(request.call_id)
        if call is None or call.view.phase != "connected" or call.view.held == request.hold:
            return
        if request.hold:
            self._agent.hold(request.call_id)
        else:
            for other in self._calls.values():  # only one call talks at a time
                if other is not call and other.view.phase == "connected" and not other.view.held:
                    await self._hold(fx.HoldCall(other.view.call_id, True))
            self._agent.resume(request.call_id)
            self._audio.media = call.media.exchange
        call.media.set_held(request.hold)
        self._update(call, held=request.hold)

    # Media.

    async def _open_media(self, account: Account, peer_uri: str) -> MediaSession:
        """A media session; its events reach the call once ``_track`` has made it."""
        media = MediaSession(bind_address=self._media_address(account), zid_cache=self._cache(),
                             self_uri=zid_cache_uri(f"sip:{account.address}"), peer_uri=zid_cache_uri(peer_uri),
                             on_event=lambda event: None, device_rate=self._config["audio.rate"],
                             allow_plain=account.allow_plain)
        await media.open()
        return media

    def _track(self, view: fx.CallView, account: Account, media: MediaSession) -> _Call:
        call = _Call(view, account, media)
        media.on_event = lambda event: self._on_media(call, event)
        self._calls[view.call_id] = call
        return call

    def _offer(self, media: MediaSession) -> MediaOffer:
        return MediaOffer(media.rtp_port, media.rtcp_port, media.bind_address, media.zrtp_hash)

    def _media_address(self, account: Account) -> str:
        configured = self._config["calls.media_address"]
        if configured:
            return configured
        return self.route(_server_host(account.address))

    def _cache(self) -> ZidCache:
        if self._zid_cache is None:
            saved = None
            store = self._store.store
            if store is not None:
                try:
                    saved = store.get(ZID_CACHE_RECORD)
                except KeyError:
                    pass
            self._zid_cache = ZidCache(saved)
        return self._zid_cache

    def _save_zid_cache(self) -> None:
        store = self._store.store
        if self._zid_cache is not None and store is not None:
            store.put(ZID_CACHE_RECORD, self._zid_cache.serialize())

    def _on_media(self, call: _Call, event) -> None:
        if self._calls.get(call.view.call_id) is not call:
            return  # the call has ended
        if isinstance(event, MediaSecure):
            security = "key_changed" if event.cache_mismatch else "verified" if event.verified else "secure"
            reason = "The other phone's key changed" if event.cache_mismatch else ""
            self._update(call, security=security, sas=event.sas, reason=reason)
            self._audio.media = call.media.exchange
        elif isinstance(event, MediaNotEncrypted):
            self._update(call, security="not_encrypted", reason=event.reason)
            if call.account.allow_plain:
                self._audio.media = call.media.exchange
            else:
                self._agent.hangup(call.view.call_id, NOT_ACCEPTABLE, "Encryption required")
        elif isinstance(event, MediaFailed):
            self._update(call, security="failed", reason=event.reason)
            self._agent.hangup(call.view.call_id)

    # SIP events, on the loop.

    def _on_sip(self, event) -> None:
        if isinstance(event, Registered):
            status = "registered" if event.ok else f"failed: {event.code} {event.reason}"
            self._post(fx.AccountStatus(event.account_id, status))
        elif isinstance(event, IncomingCall):
            self._spawn(self._incoming(event))
        elif isinstance(event, CallProgress):
            self._progress(event)
        elif isinstance(event, RemoteMediaChanged):
            call = self._calls.get(event.call_id)
            if call is not None:
                self._set_remote(call, event.remote_media)
        elif isinstance(event, CallEnded):
            self._ended(event)

    async def _incoming(self, event: IncomingCall) -> None:
        account = self._accounts.get(event.account_id)
        remote = event.remote_media
        if account is None:
            self._agent.reject(event.call_id, 404, "Not here")
            return
        if (remote is None or remote.zrtp_hash is None) and not account.allow_plain:
            # Refused before it rings: the caller's phone shows why; ours notes a refused call.
            self._agent.reject(event.call_id, NOT_ACCEPTABLE, "ZRTP required")
            self._post(fx.CallChanged(fx.CallView(event.call_id, _peer_name(event.remote_uri), True, "ended",
                                                  "failed", reason="refused: caller has no ZRTP")))
            return
        media = await self._open_media(account, event.remote_uri)
        call = self._track(fx.CallView(event.call_id, event.remote_display or _peer_name(event.remote_uri), True,
                                       "incoming"), account, media)
        self._set_remote(call, remote)
        call.ready.set()
        self._agent.ring(event.call_id)
        self._publish(call)

    def _set_remote(self, call: _Call, remote: RemoteMedia) -> None:
        lost_zrtp = call.remote is not None and call.remote.zrtp_hash is not None and remote.zrtp_hash is None
        call.remote = remote
        call.media.set_remote(remote.address, remote.rtp_port, remote.payload_types, remote.zrtp_hash,
                              remote.telephone_event_pt, remote.rtcp_port)
        if lost_zrtp:
            log.warning("call %s: the peer's new SDP has no ZRTP", call.view.call_id)

    def _progress(self, event: CallProgress) -> None:
        call = self._calls.get(event.call_id)
        if call is None:
            return
        phase = {"ringing": "ringing", "early": "ringing", "connected": "connected"}.get(event.state)
        if phase is None or phase == call.view.phase or (call.view.incoming and phase == "ringing"):
            return  # our own 180 on an incoming call is not news: it keeps ringing here
        self._update(call, phase=phase, answered=call.view.answered or phase == "connected")
        if phase == "connected":
            call.media.start()

    def _ended(self, event: CallEnded) -> None:
        call = self._calls.pop(event.call_id, None)
        if call is None:
            return
        if self._audio.media == call.media.exchange:
            self._audio.media = None
        call.media.close()
        self._save_zid_cache()
        missed = call.view.incoming and not call.view.answered and not call.view.reason
        reason = "missed" if missed else call.view.reason or (f"{event.code} {event.reason}" if event.code >= 300 else "")
        self._update(call, phase="ended", reason=reason)
        self._log_call(call.view)

    # The call log: only with call history on, only in the store.

    def _log_call(self, view: fx.CallView) -> None:
        entry = fx.CallRecord(time.time(), view.peer, view.incoming, outcome(view), view.security)
        if self._history_on and self._store.store is not None:
            self._store.store.put_history(f"call:{entry.when:.6f}", json.dumps(entry.to_dict()).encode())
            self._post(fx.CallLogged((entry,)))

    def _load_call_log(self) -> None:
        store = self._store.store
        entries = []
        for name in store.history_names() if store is not None else ():
            if name.startswith("call:"):
                try:
                    entries.append(fx.CallRecord.from_dict(json.loads(store.get_history(name))))
                except (ValueError, KeyError, TypeError, StoreError) as e:
                    log.error("call log: an entry cannot be read (%s)", type(e).__name__)
        self._post(fx.CallLogged(tuple(sorted(entries, key=lambda e: e.when))))

    def _update(self, call: _Call, **changes) -> None:
        call.view = replace(call.view, **changes)
        self._publish(call)

    def _publish(self, call: _Call) -> None:
        self._post(fx.CallChanged(call.view))


def outcome(view: fx.CallView) -> str:
    """How a call ended, for the log: answered, missed, declined or failed (busy, refused, no ZRTP...)."""
    if view.reason in ("missed", "declined"):
        return view.reason
    return "answered" if view.answered and view.security != "failed" else "failed"


def _bare_uri(uri: str) -> str:
    """sip:user@host[:port], without display name, angle brackets or parameters."""
    _, address = split_name_addr(uri)
    return address.split(";", 1)[0]


def _server_host(address: str) -> str:
    host = address.partition("@")[2]
    return host[1:host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]


def zid_cache_uri(uri: str) -> str:
    """The ZID cache's key for a party: sip:user@host, without port (as Linphone keys it), so the
    same peer is the same entry whether it called us (From has no port) or we dialled it."""
    scheme, _, address = _bare_uri(uri).partition(":")
    user, _, host = address.partition("@")
    if host.startswith("["):
        host = host[:host.index("]") + 1]
    else:
        host = host.split(":", 1)[0]
    return f"{scheme.lower()}:{user}@{host.lower()}"


def _peer_name(uri: str) -> str:
    return _bare_uri(uri).removeprefix("sip:").removeprefix("sips:")
