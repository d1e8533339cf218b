"""A pjsua2 SIP agent for lab tests: registers accounts, optionally places one call, prints JSON.

pjsua2 allows one Endpoint per process, so tests run this script as a subprocess. The job comes
as JSON on standard input (passwords never appear on the command line):

    {"registrar": "sip:127.0.0.1:5060", "timeout": 5,
     "accounts": {"alice": {"uri": "sip:alice@127.0.0.1:5060", "password": "..."}, ...},
     "call": {"from": "alice", "to": "sip:bob@127.0.0.1:5060"}}          # "call" is optional

Every account registers once (no retries) and records the final status code of its REGISTER
(null if none came in time). Accounts answer incoming calls with 200. With "call", the caller
dials; once the call is confirmed it hangs up and waits until the callee sees the BYE. The result
on standard output:

    {"registrations": {"alice": 200, ...},
     "call": {"status": 200, "confirmed": true, "answered_by": "bob", "callee_disconnected": true}}

pjsua2's own log (SIP messages included) goes to standard error.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pjsua2 as pj

EVENT_POLL_MILLISECONDS = 10
PJSUA_LOG_LEVEL = 4  # 4 includes the SIP messages: shown by the tests only when they fail
OK = 200
SHUTDOWN_TIMEOUT_SECONDS = 1.0


class StderrLogWriter(pj.LogWriter):
    def write(self, entry):
        sys.stderr.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")


class AgentCall(pj.Call):
    """A call that remembers its last state and status code (callbacks run in the pumping thread)."""

    def __init__(self, account, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.state = pj.PJSIP_INV_STATE_NULL
        self.last_status = None

    def onCallState(self, prm):
        info = self.getInfo()
        self.state = info.state
        self.last_status = info.lastStatusCode


class AgentAccount(pj.Account):
    def __init__(self, name):
        super().__init__()
        self.name = name
        self.registration_status = None
        self.calls = []  # an unreferenced pjsua2 Call is destroyed at once (and the call dropped)

        self.unregistered = False

    def onRegState(self, prm):
        if prm.code >= OK and self.registration_status is None:
            self.registration_status = prm.code
        elif self.registration_status == OK and prm.expiration == 0:
            self.unregistered = True

    def onIncomingCall(self, prm):
        call = AgentCall(self, prm.callId)
        self.calls.append(call)
        answer = pj.CallOpParam()
        answer.statusCode = OK
        call.answer(answer)


def pump_until(endpoint, condition, deadline):
    while not condition() and time.monotonic() < deadline:
        endpoint.libHandleEvents(EVENT_POLL_MILLISECONDS)
    return condition()


def create_endpoint(log_writer):
    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0  # every callback runs inside libHandleEvents, in this thread
    config.uaConfig.mainThreadOnly = True
    config.logConfig.level = PJSUA_LOG_LEVEL
    config.logConfig.consoleLevel = PJSUA_LOG_LEVEL
    config.logConfig.writer = log_writer
    config.logConfig.msgLogging = True
    endpoint.libInit(config)
    transport = pj.TransportConfig()
    transport.boundAddress = "127.0.0.1"
    transport.port = 0
    endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    endpoint.libStart()
    endpoint.audDevManager().setNoDev()
    return endpoint


def create_account(name, uri, password, registrar):
    config = pj.AccountConfig()
    config.idUri = uri
    config.regConfig.registrarUri = registrar
    config.regConfig.retryIntervalSec = 0  # report the first final answer, do not try again
    config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", name, 0, password))
    account = AgentAccount(name)
    account.create(config)
    return account


def place_call(endpoint, accounts, job, deadline):
    caller = accounts[job["from"]]
    call = AgentCall(caller)
    caller.calls.append(call)
    call.makeCall(job["to"], pj.CallOpParam(True))
    ended = {pj.PJSIP_INV_STATE_CONFIRMED, pj.PJSIP_INV_STATE_DISCONNECTED}
    pump_until(endpoint, lambda: call.state in ended, deadline)
    result = {"status": call.last_status, "confirmed": call.state == pj.PJSIP_INV_STATE_CONFIRMED}
    answered = [(name, c) for name, account in accounts.items() if account is not caller for c in account.calls]
    result["answered_by"] = answered[0][0] if answered else None
    if result["confirmed"]:
        call.hangup(pj.CallOpParam(True))
        result["callee_disconnected"] = pump_until(
            endpoint,
            lambda: bool(answered) and answered[0][1].state == pj.PJSIP_INV_STATE_DISCONNECTED,
            deadline,
        )
    return result


def run(job):
    deadline = time.monotonic() + job["timeout"]
    log_writer = StderrLogWriter()
    endpoint = create_endpoint(log_writer)
    accounts = {}
    try:
        for name, account in job["accounts"].items():
            accounts[name] = create_account(name, account["uri"], account["password"], job["registrar"])
        pump_until(endpoint, lambda: all(a.registration_status is not None for a in accounts.values()), deadline)
        result = {"registrations": {name: a.registration_status for name, a in accounts.items()}}
        if "call" in job:
            result["call"] = place_call(endpoint, accounts, job["call"], deadline)
        return result
    finally:
        shut_down(endpoint, accounts)


def shut_down(endpoint, accounts):
    """Hang up and unregister (so no stale contact stays at the registrar), then destroy pjsua.

    Waiting here for the replies lets ``libDestroy`` skip its fixed one-second wait for them.
    """
    endpoint.hangupAllCalls()
    registered = [account for account in accounts.values() if account.registration_status == OK]
    for account in registered:
        account.setRegistration(False)
    pump_until(
        endpoint,
        lambda: all(account.unregistered for account in registered),
        time.monotonic() + SHUTDOWN_TIMEOUT_SECONDS,
    )
    for account in accounts.values():
        account.calls.clear()
        account.shutdown()
    accounts.clear()
    endpoint.libDestroy(pj.PJSUA_DESTROY_NO_RX_MSG)


def main():
    job = json.load(sys.stdin)
    # pjlib prints to standard output before its log writer is set: keep stdout for the JSON alone.
    result_stream = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    result = run(job)
    result_stream.write(json.dumps(result) + "\n")
    result_stream.close()


if __name__ == "__main__":
    main()
