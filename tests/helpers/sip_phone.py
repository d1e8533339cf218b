"""One firmware SipAgent in its own process, driven by JSON lines, for tests of firmware/calls/sip.py.

pjsua2 allows one Endpoint per process, so a test that needs two phones runs two of these. The
first line on standard input starts the agent:

    {"bind_address": "127.0.0.1", "tls_cert": null, "tls_key": null, "log_level": 4, "ring_timeout_s": 120,
     "listen_udp": true, "listen_tcp": false, "log_private": false, "nameservers": []}

and the process answers ``{"event": "Started", "ports": {"udp": N, "tcp": N[, "tls": N]}}``.
Every further line is a command ``{"id": 1, "cmd": NAME, ...arguments}``, answered by
``{"event": "Result", "id": 1, "ok": true, "value": ...}`` (or ``"ok": false, "error": TEXT``):

    add_account {"config": {SipAccountConfig fields}}      remove_account {"account_id"}
    make_call {"account_id", "uri", "offer": {MediaOffer fields}} -> call_id
    ring / hold / resume {"call_id"}    answer {"call_id", "offer"}
    hangup {"call_id", "code"?}         reject {"call_id", "code", "reason"}
    auto {"incoming": "reject" | "ring" | "answer" | null, "code"?, "offer"?}   (what to do with IncomingCall)
    stop                                 (stops the agent, prints Stopped, exits)

Every SipEvent is printed as ``{"event": CLASS NAME, ...its fields, "t": monotonic seconds}``.
Logs (pjsua's included) go to standard error; passwords come only on standard input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import threading
import time

from firmware.calls.sip import MediaOffer, SipAccountConfig, SipAgent, SipError


class Phone:
    def __init__(self, out, config):
        self.out = out
        self.auto: dict | None = None
        self.agent = SipAgent(
            self.on_event,
            bind_address=config.get("bind_address", "127.0.0.1"),
            tls_cert_path=config.get("tls_cert"),
            tls_key_path=config.get("tls_key"),
            log_level=config.get("log_level", 4),
            ring_timeout_s=config.get("ring_timeout_s", 120.0),
            listen_udp=config.get("listen_udp", True),
            listen_tcp=config.get("listen_tcp", False),
            log_private=config.get("log_private", False),
            nameservers=tuple(config.get("nameservers", ())),
        )

    def write(self, message: dict) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    def on_event(self, event) -> None:
        self.write({"event": type(event).__name__, **dataclasses.asdict(event), "t": time.monotonic()})
        auto = self.auto
        if type(event).__name__ == "IncomingCall" and auto and auto.get("incoming"):
            try:
                if auto["incoming"] == "reject":
                    self.agent.reject(event.call_id, auto.get("code", 486), auto.get("reason", ""))
                elif auto["incoming"] == "ring":
                    self.agent.ring(event.call_id)
                elif auto["incoming"] == "answer":
                    self.agent.answer(event.call_id, MediaOffer(**auto["offer"]))
            except SipError as error:
                self.write({"event": "AutoFailed", "call_id": event.call_id, "error": str(error)})

    def run_command(self, command: dict):
        name = command["cmd"]
        agent = self.agent
        if name == "add_account":
            return agent.add_account(SipAccountConfig(**command["config"]))
        if name == "remove_account":
            return agent.remove_account(command["account_id"])
        if name == "make_call":
            return agent.make_call(command["account_id"], command["uri"], MediaOffer(**command["offer"]))
        if name == "answer":
            return agent.answer(command["call_id"], MediaOffer(**command["offer"]))
        if name in ("ring", "hold", "resume"):
            return getattr(agent, name)(command["call_id"])
        if name == "hangup":
            return agent.hangup(command["call_id"], command.get("code"))
        if name == "reject":
            return agent.reject(command["call_id"], command["code"], command.get("reason", ""))
        if name == "auto":
            self.auto = command
            return None
        if name == "calls":
            return agent.call_ids()
        if name == "ports":
            return agent.ports
        raise SipError(f"unknown command {name!r}")


async def main_async(out) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue()

    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    first = await lines.get()
    if first is None:
        return
    phone = Phone(out, json.loads(first))
    phone.agent.start()
    phone.write({"event": "Started", "ports": phone.agent.ports})
    try:
        while True:
            line = await lines.get()
            if line is None:
                break
            command = json.loads(line)
            if command["cmd"] == "stop":
                break
            try:
                value = phone.run_command(command)
                phone.write({"event": "Result", "id": command.get("id"), "ok": True, "value": value})
            except SipError as error:
                phone.write({"event": "Result", "id": command.get("id"), "ok": False, "error": str(error)})
    finally:
        started = time.monotonic()
        phone.agent.stop()
        await asyncio.sleep(0)  # deliver the last events
        phone.write({"event": "Stopped", "seconds": time.monotonic() - started})


def main() -> None:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # pjlib prints to standard output before its log writer is set: keep stdout for the JSON alone.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    asyncio.run(main_async(out))
    out.close()


if __name__ == "__main__":
    main()
