"""A real wpa_supplicant for tests: the ``wired`` driver on a veth interface inside a private
user+network namespace (no root, no wireless hardware), reached through its real control socket.

``running_supplicant(tmp_path)`` yields a :class:`Supplicant` and stops it by its process group
afterwards, even when the test failed, printing the tail of its -dd debug log (pytest shows it
for failing tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from firmware.network.wpa import WpaControl

INTERFACE = "v0"
STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 200
TOOLS = {"unshare": "util-linux", "ip": "iproute2", "wpa_supplicant": "wpasupplicant"}


@dataclass
class Supplicant:
    """A running wpa_supplicant: its control directory and socket, where our client sockets go, its log."""

    process: subprocess.Popen
    control_dir: Path
    client_dir: Path
    log_path: Path

    @property
    def socket_path(self) -> Path:
        return self.control_dir / INTERFACE

    def control(self, **kwargs) -> WpaControl:
        return WpaControl(self.socket_path, self.client_dir, **kwargs)

    @contextlib.asynccontextmanager
    async def opened(self, *, attach: bool = False, **kwargs) -> AsyncIterator[WpaControl]:
        """A client of it, open (and attached), closed afterwards."""
        control = self.control(**kwargs)
        await control.open()
        try:
            if attach:
                await control.attach()
            yield control
        finally:
            control.close()

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """Stop it (idempotent); SIGTERM first so its log is flushed, SIGKILL if that does not do."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)  # a stopped process only handles SIGTERM once continued
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{name} is missing: install the Debian package {TOOLS[name]}")
    return found


@contextlib.contextmanager
def running_supplicant(tmp_path: Path) -> Iterator[Supplicant]:
    unshare, ip, wpa_supplicant = (_tool(name) for name in TOOLS)
    # Unix socket paths are limited to 107 bytes: tmp_path can be longer than that allows.
    with tempfile.TemporaryDirectory(prefix="wpa-") as short_dir:
        control_dir = Path(short_dir) / "ctrl"
        client_dir = Path(short_dir) / "client"
        client_dir.mkdir()
        config = tmp_path / "wpa_supplicant.conf"
        config.write_text(f"ctrl_interface=DIR={control_dir}\nupdate_config=0\nap_scan=0\n")
        log_path = tmp_path / "wpa_supplicant.log"
        script = (f"{ip} link add {INTERFACE} type veth peer name v1 && {ip} link set {INTERFACE} up && "
                  f"exec {wpa_supplicant} -D wired -i {INTERFACE} -c {config} -dd -t")
        with log_path.open("wb") as log_file:
            process = subprocess.Popen([unshare, "--net", "--map-root-user", "sh", "-c", script],
                                       stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        running = Supplicant(process, control_dir, client_dir, log_path)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not running.socket_path.exists():
                if process.poll() is not None:
                    pytest.fail(f"wpa_supplicant exited with {process.returncode} before creating its socket")
                if time.monotonic() > deadline:
                    pytest.fail(f"no control socket {running.socket_path} after {STARTUP_TIMEOUT_S} s")
                time.sleep(0.01)
            yield running
        finally:
            running.stop()
            lines = running.log().splitlines()
            print(f"--- wpa_supplicant log, last {LOG_TAIL_LINES} of {len(lines)} lines ---")
            print("\n".join(lines[-LOG_TAIL_LINES:]))
