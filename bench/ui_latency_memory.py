"""Key press to frame latency and idle memory of the firmware with simulated drivers.

Prints one JSON object on the last line. Latency is measured in-process from posting a key
event to the new frame having been handed to the display, for the headless (dummy) display and
for the simulator's terminal display (drawing into a pipe nobody reads quickly enough to matter,
/dev/null). Idle memory is the resident set of the real simulator process (`./byline run`
without the lab) in a pseudo-terminal, after it has settled on the PIN screen.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.display import register_display_backend  # noqa: E402
from drivers.display.terminal import TerminalDevice  # noqa: E402
from firmware.scenario import ScenarioPhone, headless_config  # noqa: E402

PRESSES = 300
IDLE_SETTLE_S = 3.0
TARGET_KEY_TO_FRAME_MS = 20
TARGET_IDLE_RSS_MB = 60


async def key_to_frame_ms(display_driver: str) -> list[float]:
    samples = []
    async with ScenarioPhone(headless_config(display__driver=display_driver)) as phone:
        await phone.set_up_pin()
        await phone.press("ok")
        for i in range(PRESSES):
            key = "down" if i % 2 == 0 else "up"
            start = time.perf_counter()
            await phone.press(key)
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def idle_rss_mb() -> float:
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    work = tempfile.TemporaryDirectory(prefix="byline-bench-")
    proc = subprocess.Popen([sys.executable, "-m", "firmware.simulator", "--no-lab", "--run-dir", work.name,
                             "--state-dir", f"{work.name}/state"], cwd=ROOT, env=env,
                            stdin=slave, stdout=slave, stderr=slave)
    os.set_blocking(master, False)

    def drain_for(seconds: float) -> None:  # the simulator blocks if nobody reads its terminal
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                os.read(master, 65536)
            except (BlockingIOError, OSError):
                time.sleep(0.02)

    try:
        drain_for(IDLE_SETTLE_S)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        os.write(master, b"q")
        drain_for(10)
        if proc.poll() is None:
            raise RuntimeError("the simulator did not quit on q")
        return rss_kb / 1024
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def summary(name: str, samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        f"{name}_ms_median": round(statistics.median(ordered), 3),
        f"{name}_ms_p95": round(ordered[int(len(ordered) * 0.95) - 1], 3),
        f"{name}_ms_max": round(ordered[-1], 3),
    }


def main() -> None:
    devnull = open(os.devnull, "w")
    register_display_backend("terminal", lambda *, width, height, rotate, **_: TerminalDevice(
        devnull, "halfblock", width, height, rotate))
    results = {"presses": PRESSES}
    results |= summary("key_to_frame_headless", asyncio.run(key_to_frame_ms("dummy")))
    results |= summary("key_to_frame_terminal", asyncio.run(key_to_frame_ms("terminal")))
    results["idle_rss_mb"] = round(idle_rss_mb(), 1)
    results["target_key_to_frame_ms"] = TARGET_KEY_TO_FRAME_MS
    results["target_idle_rss_mb"] = TARGET_IDLE_RSS_MB
    print(json.dumps(results))


if __name__ == "__main__":
    main()
