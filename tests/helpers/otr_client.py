"""A bare OTR chat client for tests and benches: the firmware's XmppClient and OtrAccount glued
directly, with no phone around them (as any libotr client over XMPP is).

What libotr injects (queries, key exchange, SMP) goes out as it is, to the full JID when OTR
talks to one instance; every received message goes through ``otr.receiving``. The lists record
what happened: ``wire_out`` (to, body) and ``wire_in`` (full sender, body) as on the server,
``shown`` (bare sender, plaintext) as a phone would show it, and each side's events.
"""

from __future__ import annotations

import asyncio
import time

from firmware.chat.otr import OtrAccount
from firmware.chat.xmpp import Connected, MessageReceived, SubscriptionRequest, XmppAccountConfig, XmppClient

WAIT_S = 15.0
POLL_S = 0.02


class OtrClient:
    def __init__(self, lab, user: str, password: str | None = None):
        service = lab.xmpp
        self.jid = service.jid(user)
        self.config = XmppAccountConfig(self.jid, password or lab.users[user], host=service.host, port=service.port,
                                        ca_path=service.ca_path)
        self.xmpp_events: list = []
        self.otr_events: list = []
        self.shown: list[tuple[str, str]] = []
        self.wire_out: list[tuple[str, str]] = []
        self.wire_in: list[tuple[str, str]] = []
        self.client = XmppClient(self.config, self._on_xmpp)
        self.otr = OtrAccount(self.jid, private_key=None, instance_tag=None, fingerprints=None,
                              send=self._send, on_event=self.otr_events.append)
        self.otr.generate_key()

    def _send(self, to: str, text: str) -> None:
        self.wire_out.append((to, text))
        self.client.send(to, text)

    def _on_xmpp(self, event) -> None:
        self.xmpp_events.append(event)
        if isinstance(event, MessageReceived):
            self.wire_in.append((event.from_jid, event.body))
            shown = self.otr.receiving(event.from_jid, event.body)
            if shown is not None:
                self.shown.append((event.from_jid.split("/")[0], shown))
        elif isinstance(event, SubscriptionRequest):
            self.client.authorize(event.jid)

    def say(self, peer: str, text: str) -> None:
        """Encrypt ``text`` for ``peer`` (or, with no private conversation yet, ask for one)."""
        wire = self.otr.sending(peer, text)
        if wire is not None:
            self._send(self.otr.route(peer), wire)

    async def until(self, predicate, what: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            await asyncio.sleep(POLL_S)
        raise AssertionError(f"no {what} within {timeout} s; otr events {self.otr_events[-10:]}; "
                             f"shown {self.shown}; xmpp {self.xmpp_events[-10:]}")

    async def connect(self) -> None:
        self.client.start()
        await self.until(lambda: any(isinstance(e, Connected) for e in self.xmpp_events), "Connected")

    async def close(self) -> None:
        await self.client.stop()
        self.otr.close()
