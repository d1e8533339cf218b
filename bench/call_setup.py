"""Call set-up time (dial to SECURE) and resident memory in a call: Byline against linphonec.

Prints one JSON object on the last line. Everything runs on loopback through the lab's Kamailio
(``Lab(xmpp=False)``, digest auth), in temporary directories, and every process is stopped.
For each pair, N calls (``--calls``, default 7) are placed one after the other and the median
of "dial to secure" is reported in milliseconds:

- ``byline_to_linphonec``: a Byline phone (``./byline scenario`` in its own process, account and
  contact typed on the keypad, the handset lifted in Contacts) calls linphonec (auto-answer,
  ZRTP mandatory). "secure" is the time of Byline's log line "ZRTP: secure (...)" (INFO,
  millisecond timestamps); "dial" is the scenario's ``print`` just before ``lift``, timed as
  the bench reads it (so a pipe's latency late: the figure errs short by well under a
  millisecond). ``..._invite_to_secure_ms_median`` starts at the log's "SIP call-N: calling"
  instead (the INVITE leaving, after the call's media socket opened). linphonec offers only
  DH3k, so that is the key agreement.
- ``linphonec_to_linphonec``: a second linphonec calls the same one, from writing ``call URI`` on
  its stdin to reading its "Call N is fully encrypted" line (both ends DH3k).
- ``byline_to_byline``: one Byline phone calls another (the callee lifts the handset as soon as
  it rings), measured at the caller as above; the ZRTP suites the two chose are reported.

Memory: VmRSS of the Byline phone process (Python, pjsua2, bzrtp, libsrtp, spandsp; its swtpm
is a separate process and not counted) and of linphonec, each sampled during a secure call with
audio flowing. The scenario phone also renders every frame to PNG (the ``capture`` display),
which a real handset does not.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.linphonec import Linphonec  # noqa: E402
from helpers.phones import ScriptedPhone, account_steps, contact_steps  # noqa: E402
from lab import Lab  # noqa: E402

CALLS = 7
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def vmrss_kib(pid: int | None) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def log_calls(log: Path) -> list[tuple[float, float, str]]:
    """(time of "calling", time of the next "ZRTP: secure", its suites) of each call in a Byline log."""
    calls, placed = [], None
    for line in log.read_text(errors="replace").splitlines():
        match = LOG_TIME.match(line)
        if not match:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if re.search(r"SIP call-\d+: calling", line):
            placed = at
        elif "ZRTP: secure (" in line and placed is not None:
            calls.append((placed, at, line.split("ZRTP: secure (", 1)[1].split(",", 1)[0]))
            placed = None
    return calls


def byline_figures(prefix: str, log: Path, dialled: list[float], results: dict) -> None:
    """Dial (the keypad's lift, marked by the print just before it) to secure, and INVITE to secure."""
    calls = log_calls(log)
    if len(calls) != len(dialled):
        raise RuntimeError(f"{prefix}: {len(dialled)} calls dialled, {len(calls)} secure in the log")
    dial = [round((secure - lift) * 1000, 1) for lift, (_, secure, _) in zip(dialled, calls, strict=True)]
    invite = [round((secure - placed) * 1000, 1) for placed, secure, _ in calls]
    results[f"{prefix}_dial_to_secure_ms_median"] = median(dial)
    results[f"{prefix}_dial_to_secure_ms"] = dial
    results[f"{prefix}_invite_to_secure_ms_median"] = median(invite)
    results[f"{prefix}_zrtp_suites"] = sorted({suites for _, _, suites in calls})


def place_calls(alice: ScriptedPhone, calls: int, during_call=None) -> list[float]:
    """Follow ``caller_script``: the wall-clock time of each dial marker; ``during_call()`` once secure."""
    dialled = []
    for _ in range(calls):
        alice.read_until("screen: ")
        dialled.append(time.time())
        alice.read_until("screen: .*SECURE")
        if during_call is not None:
            during_call()
    alice.finish()
    return dialled


def caller_script(calls: int) -> str:
    """Lift in Contacts (the new contact selected) N times; a print marks each dial (the lift follows it
    at once; the time the bench reads the line is the dial time, late by a pipe's latency)."""
    one = """
print
lift
expect SECURE 30
print
pause 1
hangup
expect "Call ended" 10
pause 0.5
"""
    return one * calls


def callee_script(calls: int) -> str:
    one = """
expect "Incoming call" 60
lift
expect SECURE 30
print
expect "Call ended" 30
hangup
"""
    return "print\n" + one * calls


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def byline_to_linphonec(lab: Lab, work: Path, calls: int, results: dict) -> None:
    sip = lab.sip
    bob = Linphonec(work / "linphonec-bob", user="bob", password=lab.users["bob"], registrar=sip, record=False,
                    debug_level=1)
    alice = None
    try:
        bob.start()
        alice = ScriptedPhone("alice", work, account_steps(f"alice@{sip.host}:{sip.port}", lab.users["alice"])
                              + contact_steps("Bob", f"bob@{sip.host}:{sip.port}") + caller_script(calls))
        byline_rss, linphonec_rss = [], []

        def sample() -> None:
            byline_rss.append(vmrss_kib(alice.process.pid))
            linphonec_rss.append(vmrss_kib(bob.pid))

        dialled = place_calls(alice, calls, sample)
    finally:
        bob.stop()
        if alice is not None:
            alice.stop()
    byline_figures("byline_to_linphonec", alice.log, dialled, results)
    results["byline_vmrss_kib_in_call"] = max(filter(None, byline_rss), default=None)
    results["linphonec_vmrss_kib_in_call"] = max(filter(None, linphonec_rss), default=None)


def linphonec_to_linphonec(lab: Lab, work: Path, calls: int, results: dict) -> None:
    sip = lab.sip
    bob = Linphonec(work / "linphonec-callee", user="bob", password=lab.users["bob"], registrar=sip, record=False,
                    debug_level=1)
    alice = Linphonec(work / "linphonec-caller", user="alice", password=lab.users["alice"], registrar=sip,
                      record=False, register=False, auto_answer=False, tone=1000.0, debug_level=1)
    times = []
    try:
        bob.start()
        alice.start()
        for _ in range(calls):
            mark = alice.mark()
            sent = alice.send(f"call {sip.uri('bob')}")
            alice.wait_for(r"Call \d+ is fully encrypted and auth token is", 30, since=mark)
            times.append(round((alice.last_match_at - sent) * 1000, 1))
            time.sleep(0.5)
            alice.terminate()
            alice.wait_for(r"Call \d+ with .* ended", 10)
            bob.wait_for(r"Call \d+ with .* ended", 10)
            time.sleep(0.3)
    finally:
        alice.stop()
        bob.stop()
    results["linphonec_to_linphonec_dial_to_secure_ms_median"] = median(times)
    results["linphonec_to_linphonec_dial_to_secure_ms"] = times


def byline_to_byline(lab: Lab, work: Path, calls: int, results: dict) -> None:
    sip = lab.sip
    bob = ScriptedPhone("bob", work, account_steps(f"bob@{sip.host}:{sip.port}", lab.users["bob"])
                        + callee_script(calls))
    alice = None
    try:
        bob.read_until("screen: ")  # registered and waiting
        alice = ScriptedPhone("alice", work, account_steps(f"alice@{sip.host}:{sip.port}", lab.users["alice"])
                              + contact_steps("Bob", f"bob@{sip.host}:{sip.port}") + caller_script(calls),
                              directory="alice-calls-bob")
        dialled = place_calls(alice, calls)
        bob.finish()
    finally:
        bob.stop()
        if alice is not None:
            alice.stop()
    byline_figures("byline_to_byline", alice.log, dialled, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=CALLS, help=f"calls per pair (default {CALLS}, at least 5)")
    args, _ = parser.parse_known_args()  # ./byline bench passes its arguments to every bench
    calls = max(args.calls, 5)
    if shutil.which("linphonec") is None:
        print(json.dumps({"error": "linphonec is not installed (Debian package linphone-cli)"}))
        return
    results: dict = {"calls_per_pair": calls}
    work = Path(tempfile.mkdtemp(prefix="byline-call-setup-"))
    try:
        with Lab(xmpp=False, directory=work / "lab") as lab:
            byline_to_linphonec(lab, work, calls, results)
            linphonec_to_linphonec(lab, work, calls, results)
            byline_to_byline(lab, work, calls, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
