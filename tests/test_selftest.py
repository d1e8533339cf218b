"""The firmware's self-test, run here as a process: what it reports is what happened."""

import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def selftest(*args: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "firmware.selftest", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_the_display_passes_and_a_server_that_answers_is_reached(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        status, report = selftest("--reach", f"127.0.0.1:{port}")
    assert status == 0 and report["ok"], report
    assert report["checks"] == {"display": True, f"reach 127.0.0.1:{port}": True}


def test_a_failing_check_fails_the_self_test_and_says_why(swtpm):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nobody listens once closed
    status, report = selftest("--reach", f"127.0.0.1:{port}", "--tpm", swtpm.tcti,
                              "--audio", "no_such_capture", "no_such_playback")
    assert status == 1 and not report["ok"]
    assert report["checks"] == {"display": True, "audio": False, "tpm": True, f"reach 127.0.0.1:{port}": False}
    assert report["info"]["tpm"] == "TPM 2.0"
    assert "audio error" in report["info"] and "refused" in report["info"][f"reach 127.0.0.1:{port}"].lower()
