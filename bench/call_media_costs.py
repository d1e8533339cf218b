"""What one call's media costs per 20 ms frame, and ZRTP's handshake, measured in this process.

Prints one JSON object on the last line (microseconds per frame; milliseconds per handshake):
G.722 and G.711 encode/decode (spandsp), resampling 16 <-> 8 kHz, concealment, the jitter buffer,
SRTP protect + unprotect (libsrtp2, AES-256 and AES-128), and a whole ZRTP handshake between two
in-process bzrtp sessions for X255 and DH3k. A frame is 20 000 us: the sum is the share of a core.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.calls.codecs import SUPPORTED, Concealer, Resampler, open_codec  # noqa: E402
from firmware.calls.rtp import JitterBuffer, RtpSender, parse  # noqa: E402
from firmware.calls.srtp import SrtpKey, SrtpProfile, SrtpSession  # noqa: E402
from firmware.calls.zrtp import ZrtpOptions, ZrtpSecure, ZrtpSession  # noqa: E402

REPEAT, NUMBER = 5, 300
HANDSHAKES = 20


def best_us(function) -> float:
    """Microseconds per call: the best of REPEAT runs of NUMBER calls (robust to a busy machine)."""
    best = math.inf
    for _ in range(REPEAT):
        start = time.perf_counter()
        for _ in range(NUMBER):
            function()
        best = min(best, (time.perf_counter() - start) / NUMBER)
    return round(best * 1e6, 2)


def tone(samples: int, rate: int) -> bytes:
    return struct.pack(f"<{samples}h", *(int(8000 * math.sin(2 * math.pi * 1000 * i / rate)) for i in range(samples)))


def codec_costs() -> dict:
    figures = {}
    for name in SUPPORTED:
        codec = open_codec(name)
        pcm = tone(codec.sample_rate // 50, codec.sample_rate)
        payload = codec.encode(pcm)
        figures[f"{name.lower()}_encode_us"] = best_us(lambda: codec.encode(pcm))
        figures[f"{name.lower()}_decode_us"] = best_us(lambda: codec.decode(payload))
        codec.close()
    wide, narrow = tone(320, 16000), tone(160, 8000)
    down, up = Resampler(16000, 8000), Resampler(8000, 16000)
    figures["resample_16k_to_8k_us"] = best_us(lambda: down.resample(wide))
    figures["resample_8k_to_16k_us"] = best_us(lambda: up.resample(narrow))
    concealer = Concealer(16000)
    figures["conceal_frame_us"] = best_us(lambda: concealer.conceal(320))
    return figures


def jitter_cost() -> float:
    sender, buffer = RtpSender(1, 9, 8000), JitterBuffer(8000)
    clock = [0.0]

    def one_frame():
        clock[0] += 0.02
        buffer.put(parse(sender.next(b"\0" * 160)), clock[0])
        buffer.get()

    return best_us(one_frame)


def srtp_costs() -> dict:
    figures = {}
    packet = RtpSender(1, 9, 8000).next(b"\x55" * 160)
    for profile in (SrtpProfile.AES256_HMAC_SHA1_80, SrtpProfile.AES128_HMAC_SHA1_80):
        key = SrtpKey(os.urandom(profile.key_length), os.urandom(profile.salt_length))
        sender, receiver = SrtpSession(profile, key, key), SrtpSession(profile, key, key)
        sequence = iter(range(1 << 30))

        def round_trip():
            numbered = packet[:2] + (next(sequence) & 0xFFFF).to_bytes(2, "big") + packet[4:]
            receiver.unprotect_rtp(sender.protect_rtp(numbered))

        figures[f"srtp_{profile.name.lower()}_protect_unprotect_us"] = best_us(round_trip)
        sender.close()
        receiver.close()
    return figures


def handshake_ms(key_agreement: str) -> float:
    options = ZrtpOptions(key_agreements=(key_agreement,))
    times = []
    for _ in range(HANDSHAKES):
        queues = {"a": [], "b": []}
        secure = []
        a = ZrtpSession(None, "sip:a@x", "sip:b@x", queues["b"].append,
                        lambda e: secure.append(e) if isinstance(e, ZrtpSecure) else None, ssrc=1, options=options)
        b = ZrtpSession(None, "sip:b@x", "sip:a@x", queues["a"].append,
                        lambda e: secure.append(e) if isinstance(e, ZrtpSecure) else None, ssrc=2, options=options)
        a.set_peer_hello_hash(b.hello_hash())
        b.set_peer_hello_hash(a.hello_hash())
        start = time.perf_counter()
        now = 0
        a.start(now)
        b.start(now)
        while len(secure) < 2 and now < 10_000:
            for target, queue in ((b, queues["b"]), (a, queues["a"])):
                while queue:
                    target.receive(queue.pop(0), now)
            now += 1
        times.append((time.perf_counter() - start) * 1000)
        a.close()
        b.close()
    times.sort()
    return round(times[len(times) // 2], 2)


def main() -> None:
    figures = {**codec_costs(), "jitter_put_get_us": jitter_cost(), **srtp_costs(),
               "zrtp_handshake_x255_ms_median": handshake_ms("X255"),
               "zrtp_handshake_dh3k_ms_median": handshake_ms("DH3k")}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
