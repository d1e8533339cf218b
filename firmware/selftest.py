"""The firmware's self-test on the machine it runs on: ``python -m firmware.selftest [options]``.

Checks what it is given, each through the firmware's own driver, and prints one JSON object
(``{"ok": bool, "checks": {...}, "info": {...}}``); the exit status is 1 when a check fails.

- ``display``: a frame rendered by the phone's screens goes through the display driver
  (``--display``, default ``dummy``) and comes back 128x64.
- ``audio`` (``--audio CAPTURE PLAYBACK``): a 1 kHz tone played on PLAYBACK is heard on CAPTURE
  through the audio driver (in the image's boot test: the ALSA loopback card of snd-aloop, a
  round trip through the kernel's sound stack).
- ``tpm`` (``--tpm auto|TCTI``): the TPM answers and identifies itself (firmware.store.tpm).
- ``reach`` (``--reach HOST:PORT``, repeatable): a TCP connection opens within REACH_TIMEOUT_S
  (the lab's SIP and XMPP servers, when given).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import struct
import sys
import time
from collections.abc import Sequence

from drivers.audio import frame_samples, open_audio
from drivers.display import open_display
from drivers.errors import DeviceError

TONE_HZ = 1000.0
RATE = 16000
ROUND_TRIP_FRAMES = 50
"""One second of 20 ms frames: the loopback's latency is a few frames, the tone is judged on the rest."""
TONE_SHARE_MIN = 0.5
REACH_TIMEOUT_S = 3.0


def check_display(driver: str) -> tuple[bool, dict]:
    from firmware.state import PhoneState
    from firmware.ui.screens import render

    display = open_display(driver)
    try:
        frame = render(PhoneState())
        display.show(frame)
        shown = display.last_frame
        return shown is not None and shown.size == (128, 64), {"display": driver}
    finally:
        display.close()


def tone_share(samples: Sequence[int], frequency: float = TONE_HZ, rate: int = RATE) -> float:
    """Goertzel: the share of the signal's energy at ``frequency`` (about 1 for a pure tone)."""
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coefficient * s1 - s2, s1
    energy = sum(x * x for x in samples) or 1
    return 2 * (s1 * s1 + s2 * s2 - coefficient * s1 * s2) / (len(samples) * energy)


def check_audio(capture: str, playback: str) -> tuple[bool, dict]:
    device = open_audio(capture_device=capture, playback_device=playback, rate=RATE, volume=100)
    count = frame_samples(RATE)
    heard: list[int] = []
    try:
        for index in range(ROUND_TRIP_FRAMES):
            start = index * count
            tone = [int(8000 * math.sin(2 * math.pi * TONE_HZ * (start + i) / RATE)) for i in range(count)]
            device.write_frame(struct.pack(f"<{count}h", *tone))
            heard += struct.unpack(f"<{count}h", device.read_frame())
    finally:
        device.close()
    tail = heard[len(heard) // 2:]  # after the loopback's start-up latency
    share = tone_share(tail)
    return share >= TONE_SHARE_MIN, {"audio_tone_share": round(share, 3)}


def check_tpm(setting: str) -> tuple[bool, dict]:
    from firmware.store.tpm import open_tpm

    share = open_tpm(setting)
    try:
        return share is not None, {"tpm": getattr(share, "kind", None)}
    finally:
        close = getattr(share, "close", None)
        if close is not None:
            close()


def check_reach(target: str) -> tuple[bool, dict]:
    host, _, port = target.rpartition(":")
    started = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S):
            return True, {f"reach {target} ms": round((time.monotonic() - started) * 1000, 1)}
    except OSError as e:
        return False, {f"reach {target}": e.strerror or type(e).__name__}


def run(args: argparse.Namespace) -> dict:
    checks: dict[str, bool] = {}
    info: dict = {}
    plan = [("display", lambda: check_display(args.display))]
    if args.audio:
        plan.append(("audio", lambda: check_audio(*args.audio)))
    if args.tpm:
        plan.append(("tpm", lambda: check_tpm(args.tpm)))
    plan += [(f"reach {target}", lambda target=target: check_reach(target)) for target in args.reach]
    for name, check in plan:
        try:
            ok, details = check()
        except (DeviceError, OSError, ValueError) as e:
            ok, details = False, {f"{name} error": str(e)}
        except Exception as e:  # noqa: BLE001 - a self-test reports every failure, it never stops at one
            ok, details = False, {f"{name} error": f"{type(e).__name__}: {e}"}
        checks[name] = ok
        info.update(details)
    return {"ok": all(checks.values()), "checks": checks, "info": info}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.selftest", description=__doc__.splitlines()[0])
    parser.add_argument("--display", default="dummy", help="the display driver (default: dummy)")
    parser.add_argument("--audio", nargs=2, metavar=("CAPTURE", "PLAYBACK"), help="ALSA PCMs for a round trip")
    parser.add_argument("--tpm", help="check the TPM: auto, or a TCTI")
    parser.add_argument("--reach", action="append", default=[], metavar="HOST:PORT", help="a server to reach")
    result = run(parser.parse_args(argv))
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
