"""Secure chat costs: Byline's chat (the whole phone) against bare libotr over slixmpp, same lab, same run.

Prints one JSON object on the last line. Everything runs on loopback against the lab's real
Prosody (``Lab(sip=False)``, STARTTLS verified against the lab CA) and its chat echo bot
``echo@byline.lab`` (lab/chat_echo.py), which answers each OTR message "TEXT" inside the OTR
session with "echo: TEXT". The lab (Prosody, the echo bot) lives in a temporary directory on
free ports and is stopped at the end, whatever happens.

1. Byline (``byline_*``): a :class:`ScenarioPhone` (the whole firmware in this process,
   simulated drivers, the headless display) with a new PIN, the lab's user alice typed on the
   keypad (not registered: the lab made the account) and the contact "Echo" (its chat address
   typed too); the bench waits until the roster says "both" and the phone's OTR key exists, so
   neither is timed. Each message is typed into the conversation's text field by multi-tap; the
   clock starts just before the OK key that commits it (the state machine turns that OK into
   the SendChat request) and stops when the waiter on the supervisor's state sees the change:

   - ``byline_first_message_to_private_ms``: OK on the first message (no OTR session yet: the
     message waits in the outbox while the phone sends an OTR query) to the conversation's
     security becoming "encrypted" (the chat unit's ConversationChanged applied to the state).
     ``byline_first_message_round_trip_ms``: the same OK to the first "echo: ..." line.
   - ``byline_round_trip_ms_*``: then N messages (``--messages``, default 20) one after the
     other, OK to the "echo: TEXT" line in the conversation; ``byline_delivered_ms_median``: OK
     to the line's status "delivered" (the echo bot's XEP-0184 receipt).

   The phone keeps message history off (the factory setting), so the store writes in that path
   are the outbox record (on send and on the receipt) and the account record (every received
   message's id, for repeats after a restart), each an AEAD file written with two fsyncs in the
   system temp directory, through the store unit's access.

2. The reference (``libotr_*``): bare libotr over slixmpp. ``OtrClient`` of
   tests/helpers/otr_client.py (the firmware's own firmware/chat/otr.py + firmware/chat/xmpp.py
   glued directly: MessageReceived -> ``otr.receiving``, what libotr injects -> ``client.send``;
   the glue the mcabber/libotr 4.1 interop test uses), logged in as the same alice after the
   phone has stopped (both use resource "byline", so they must not be online together), against
   the same echo bot. The same figures: ``libotr_first_message_to_private_ms`` (``say`` of the
   first message to libotr's Encrypted event), ``libotr_first_message_round_trip_ms``,
   ``libotr_round_trip_ms_*`` and ``libotr_delivered_ms_median``. Its times are taken in the
   client's callback, with no polling. mcabber itself (libotr 4.1 too) is not timed: it has no
   way to say when a message arrived but its log files.

   The difference Byline minus reference is the cost of the phone's layers over the bare
   protocol: the supervisor's event queue and pure state steps, the chat unit's outbox (kept in
   the encrypted store), the store writes above, the screens rendered for every change, and the
   keypad path of the OK key. Both sides share the CPU with Prosody and the echo bot, and the
   echo bot's own OTR work is in every round trip.

3. ``otr_ake_in_process_ms_median``: an OTR v3 AKE (query + key exchange) between two
   OtrAccounts in this process wired back to back (no network): the CPU part of going private.
   ``otr_keygen_ms_median``: ``OtrAccount.generate_key`` (DSA-1024, libgcrypt) over 5 fresh
   accounts (a random prime search: it varies a lot).

On a loopback lab the round trips come in steps of about 40 ms over a floor of a few ms (a TCP
delayed-ACK stall on some hop, Prosody's or the echo bot's, not fixed by TCP_NODELAY on this
client's socket): ``*_round_trip_ms_min`` shows the floor, and a median between two steps can
flip from run to run. Compare the two sides by their distributions, not one median.

Memory: ``rss_mb`` is VmRSS of this process (Python, the firmware with its store, libotr,
slixmpp; Prosody and the echo bot are other processes) after the phone has sent and received
all its messages, with the phone still running; ``rss_mb_before_phone`` the same before the phone
started (the lab already up, modules imported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # as call_setup.py: the tests import helpers.*

from firmware.chat.otr import Encrypted, OtrAccount
from firmware.chat.xmpp import Connected, Delivered
from firmware.scenario import ScenarioPhone, headless_config
from lab import Lab
from tests.test_chat_phones import chat_contact, open_chat, xmpp_account
from helpers.otr_client import OtrClient

MESSAGES = 20
KEYGEN_RUNS = 5
AKE_RUNS = 5
NETWORK_S = 20.0
"""A bound for anything that crosses Prosody: never reached when it works."""
ECHO_PREFIX = "echo: "  # lab.chat_echo.REPLY_PREFIX


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return round(kib / 1024, 1)


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def figures(prefix: str, first_private: float, first_round_trip: float, round_trips: list[float],
            delivered: list[float]) -> dict:
    return {
        f"{prefix}_first_message_to_private_ms": round(first_private, 1),
        f"{prefix}_first_message_round_trip_ms": round(first_round_trip, 1),
        f"{prefix}_round_trip_ms_median": round(statistics.median(round_trips), 2),
        f"{prefix}_round_trip_ms_p90": round(p90(round_trips), 2),
        f"{prefix}_round_trip_ms_min": round(min(round_trips), 2),
        f"{prefix}_round_trip_ms_max": round(max(round_trips), 2),
        f"{prefix}_delivered_ms_median": round(statistics.median(delivered), 2) if delivered else None,
    }


def message_text(index: int) -> str:
    return f"ping {index:02d}"


# --- 1. Byline ---


def conversation(state, key):
    return next((c for c in state.chats if c.key == key), None)


async def byline_send(phone: ScenarioPhone, text: str) -> float:
    """Type ``text`` into the open conversation's field; press OK; the perf_counter just before OK."""
    await phone.press("ok")
    await phone.wait_screen("edit")
    await phone.type(text)
    start = time.perf_counter()
    await phone.press("ok")
    return start


async def byline_round_trip(phone: ScenarioPhone, key, text: str, *, first: bool) -> dict[str, float]:
    """Send ``text`` from the keypad; milliseconds from OK to: the echo, the receipt (and, ``first``:
    the conversation becoming encrypted). Each time is taken when the waiter sees the state change."""
    since = len(conversation(phone.state, key).lines) if conversation(phone.state, key) else 0
    expected = ECHO_PREFIX + text
    seen: dict[str, float] = {}

    def watch(state) -> bool:
        now = time.perf_counter()
        current = conversation(state, key)
        if current is None:
            return False
        if first and "private" not in seen and current.security == "encrypted":
            seen["private"] = now
        for line in current.lines[since:]:
            if line.incoming and line.text == expected:
                seen.setdefault("echo", now)
            elif not line.incoming and line.text == text and line.status == "delivered":
                seen.setdefault("delivered", now)
        return {"echo", "delivered"} <= seen.keys() and (not first or "private" in seen)

    start = await byline_send(phone, text)
    watch(phone.state)
    await phone.supervisor.wait_for(watch, NETWORK_S)
    return {name: (at - start) * 1000 for name, at in seen.items()}


async def byline_phase(lab: Lab, messages: int, results: dict) -> None:
    echo = lab.chat_echo_jid
    alice = lab.xmpp.jid("alice")
    results["rss_mb_before_phone"] = rss_mb()
    async with ScenarioPhone(headless_config(chat__ca_file=str(lab.xmpp.ca_path))) as phone:
        await phone.set_up_pin()
        await xmpp_account(phone, lab, "alice", lab.users["alice"], register=False)
        await chat_contact(phone, "Echo", echo)
        await phone.supervisor.wait_for(
            lambda s: any(p == echo and standing == "both" for _, p, standing in s.rosters)
            and dict(s.chat_keys).get(alice), NETWORK_S)
        results["message_history"] = phone.state.settings.message_history
        await open_chat(phone, "Echo")
        key = phone.state.chat_open
        assert key == (alice, echo), key
        assert conversation(phone.state, key) is None or conversation(phone.state, key).security == "plaintext"

        first = await byline_round_trip(phone, key, "hello echo", first=True)
        round_trips, delivered = [], []
        for index in range(1, messages + 1):
            timed = await byline_round_trip(phone, key, message_text(index), first=False)
            round_trips.append(timed["echo"])
            delivered.append(timed["delivered"])
        results["rss_mb"] = rss_mb()
        results |= figures("byline", first["private"], first["echo"], round_trips, delivered)
        results["byline_first_message_delivered_ms"] = round(first["delivered"], 1)


# --- 2. Bare libotr over slixmpp ---


class TimedAlice(OtrClient):
    """tests/helpers/otr_client.py's glue, unchanged, with each event's arrival time noted and
    waiters woken at once (its ``until`` polls every 20 ms, too coarse to time with)."""

    def __init__(self, lab: Lab):
        super().__init__(lab, "alice")
        self.changed = asyncio.Event()
        self.encrypted_at: float | None = None
        self.shown_at: list[float] = []
        self.delivered_at: dict[str, float] = {}
        self.sent_ids: list[str] = []

    def _send(self, to, text):
        self.wire_out.append((to, text))
        self.sent_ids.append(self.client.send(to, text))  # as OtrClient._send, keeping the message id

    def _on_xmpp(self, event):
        shown = len(self.shown)
        super()._on_xmpp(event)
        now = time.perf_counter()
        self.shown_at += [now] * (len(self.shown) - shown)
        if isinstance(event, Delivered):
            self.delivered_at.setdefault(event.message_id, now)
        if self.encrypted_at is None and any(isinstance(e, Encrypted) for e in self.otr_events):
            self.encrypted_at = now
        self.changed.set()

    async def until(self, predicate, what, timeout=NETWORK_S):
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout} s; otr events {self.otr_events}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass

    async def round_trip(self, peer: str, text: str) -> tuple[float, float, float | None]:
        """(start, echo time, receipt time of the last message id that carried it)."""
        expected = (peer, ECHO_PREFIX + text)
        sent = len(self.sent_ids)
        start = time.perf_counter()
        self.say(peer, text)
        await self.until(lambda: expected in self.shown, f"echo of {text!r}")
        echo_at = self.shown_at[self.shown.index(expected)]
        ids = self.sent_ids[sent:]
        await self.until(lambda: ids[-1] in self.delivered_at, "the receipt")
        return start, echo_at, self.delivered_at[ids[-1]]


async def libotr_phase(lab: Lab, messages: int, results: dict) -> None:
    echo = lab.chat_echo_jid
    alice = TimedAlice(lab)
    alice.client.start()
    try:
        await alice.until(lambda: any(isinstance(e, Connected) for e in alice.xmpp_events), "Connected")
        await alice.until(lambda: any(i.jid == echo and i.subscription == "both" for i in alice.client.roster),
                          "the roster")
        # The first message: libotr answers it with a query, keeps it and sends it once private.
        first_start, first_echo, first_delivered = await alice.round_trip(echo, "hello echo")
        round_trips, delivered = [], []
        for index in range(1, messages + 1):
            start, echo_at, delivered_at = await alice.round_trip(echo, message_text(index))
            round_trips.append((echo_at - start) * 1000)
            delivered.append((delivered_at - start) * 1000)
        results |= figures("libotr", (alice.encrypted_at - first_start) * 1000, (first_echo - first_start) * 1000,
                           round_trips, delivered)
        results["libotr_first_message_delivered_ms"] = round((first_delivered - first_start) * 1000, 1)
    finally:
        await alice.client.stop()
        alice.otr.close()


# --- 3. OTR alone ---


def quiet_account(jid: str, send=lambda _to, _text: None, on_event=lambda _event: None) -> OtrAccount:
    return OtrAccount(jid, private_key=None, instance_tag=None, fingerprints=None, send=send, on_event=on_event)


def keygen_ms() -> list[float]:
    times = []
    for index in range(KEYGEN_RUNS):
        account = quiet_account(f"keygen{index}@byline.lab")
        try:
            start = time.perf_counter()
            account.generate_key()
            times.append(ms_since(start))
        finally:
            account.close()
    return times


def ake_in_process_ms() -> list[float]:
    """Two accounts (keys made beforehand) wired back to back: start() to both sides Encrypted."""
    a_jid, b_jid = "a@byline.lab", "b@byline.lab"
    a_events, b_events = [], []
    accounts: dict[str, OtrAccount] = {}
    a = accounts["a"] = quiet_account(a_jid, send=lambda _to, text: accounts["b"].receiving(a_jid + "/r", text),
                                      on_event=a_events.append)
    b = accounts["b"] = quiet_account(b_jid, send=lambda _to, text: accounts["a"].receiving(b_jid + "/r", text),
                                      on_event=b_events.append)
    times = []
    try:
        a.generate_key()
        b.generate_key()
        for _ in range(AKE_RUNS):
            a_events.clear()
            b_events.clear()
            start = time.perf_counter()
            a.start(b_jid)
            elapsed = ms_since(start)
            if not (any(isinstance(e, Encrypted) for e in a_events) and any(isinstance(e, Encrypted) for e in b_events)):
                raise RuntimeError(f"in-process AKE did not finish: {a_events} / {b_events}")
            times.append(elapsed)
            a.end(b_jid)
            b.end(a_jid)
    finally:
        a.close()
        b.close()
    return times


# --- the run ---


async def run(lab: Lab, messages: int, results: dict) -> None:
    await byline_phase(lab, messages, results)
    await libotr_phase(lab, messages, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=MESSAGES, help=f"timed messages per side (default {MESSAGES})")
    args, _ = parser.parse_known_args()  # ./byline bench passes its arguments to every bench
    messages = max(args.messages, 5)
    results: dict = {"messages": messages}
    started = time.perf_counter()
    with Lab(sip=False) as lab:
        asyncio.run(run(lab, messages, results))
    ake = ake_in_process_ms()
    results["otr_ake_in_process_ms_median"] = round(statistics.median(ake), 2)
    keygen = keygen_ms()
    results["otr_keygen_ms_median"] = round(statistics.median(keygen), 1)
    results["otr_keygen_ms"] = [round(t, 1) for t in keygen]
    results["bench_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
