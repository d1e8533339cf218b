"""A real Prosody 0.12 XMPP server on a free loopback port, configured afresh for every run.

Client-to-server only (no server-to-server, no HTTP), STARTTLS required with the lab
certificate, in-band registration allowed, all data and the log inside the lab directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.certs import LabCertificates
from lab.processes import (
    LOOPBACK,
    LabError,
    ManagedProcess,
    find_executable,
    free_tcp_port,
    start_on_free_port,
)

PROSODY_READY_TIMEOUT_SECONDS = 10.0
PROSODYCTL_TIMEOUT_SECONDS = 10.0
STREAM_PROBE_TIMEOUT_SECONDS = 0.5
# What Prosody logs when another program already listens on its c2s port.
PORT_TAKEN_MARKER = "Failed to open server port"
MODULES = (
    "roster", "saslauth", "tls", "disco", "ping", "register",
    "carbons", "offline", "vcard", "blocklist", "smacks",
)


@dataclass(frozen=True)
class XmppService:
    """What an XMPP client needs: connect to ``host``:``port``, log in as ``user@domain``, trust ``ca_path``.

    The port speaks STARTTLS (slixmpp: ``enable_direct_tls = False``) and refuses plaintext logins.
    """

    host: str
    port: int
    domain: str
    ca_path: Path

    def jid(self, user: str) -> str:
        """The bare JID of lab user ``user``."""
        return f"{user}@{self.domain}"


class ProsodyServer:
    """Prosody for ``domain`` in ``directory`` (which must exist): ``register`` users, ``start``, ``stop``,
    ``start_again`` (on the same port)."""

    def __init__(self, directory: Path, domain: str, certificates: LabCertificates):
        self.directory = Path(directory)
        self.domain = domain
        self.certificates = certificates
        self.config_path = self.directory / "prosody.cfg.lua"
        self.log_path = self.directory / "prosody.log"
        self.data_path = self.directory / "prosody-data"
        self.process: ManagedProcess | None = None
        self.service: XmppService | None = None
        self._port = 0  # the config must exist for prosodyctl before the server has a port

    def register(self, user: str, password: str) -> None:
        """Create account ``user@domain`` or set its password (before or after ``start``); ``LabError`` on failure."""
        self._write_config()
        prosodyctl = find_executable("prosodyctl", "prosody")
        argv = [prosodyctl, "--config", str(self.config_path), "register", user, self.domain, password]
        try:
            result = subprocess.run(
                argv, cwd=self.directory, capture_output=True, text=True, timeout=PROSODYCTL_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"prosodyctl register {user} did not finish within {PROSODYCTL_TIMEOUT_SECONDS:.0f} s")
        if result.returncode != 0:
            raise LabError(f"prosodyctl register {user} failed ({result.returncode}): {result.stdout}{result.stderr}")

    def start(self) -> XmppService:
        """Start Prosody on a free port; return once it opens XMPP streams for ``domain``."""
        if self.process is not None:
            raise LabError("Prosody was already started")
        self.process, port = start_on_free_port(
            self._launch,
            lambda port: xmpp_stream_opens(LOOPBACK, port, self.domain),
            allocate_port=free_tcp_port,
            ready_timeout=PROSODY_READY_TIMEOUT_SECONDS,
            port_taken_marker=PORT_TAKEN_MARKER,
        )
        self.service = XmppService(LOOPBACK, port, self.domain, self.certificates.ca_path)
        return self.service

    def stop(self) -> None:
        """Stop Prosody if it runs (idempotent); ``start_again()`` brings it back on the same port."""
        if self.process is not None:
            self.process.stop()

    def start_again(self) -> XmppService:
        """Start the stopped Prosody again on the port it had (accounts, rosters and offline messages
        are in ``data_path`` and survive); nothing if it runs. ``LabError`` (with the log tail) when
        it does not open streams in time, for instance because another program took the port."""
        if self.process is None or self.service is None:
            raise LabError("Prosody was never started: start() it first")
        if self.process.running:
            return self.service
        port = self.service.port
        process = self._launch(port)
        self.process = process

        def ready() -> bool:
            if PORT_TAKEN_MARKER in process.log_text():
                raise LabError(f"prosody cannot listen on its port {port} again\n{process.log_tail()}")
            return xmpp_stream_opens(LOOPBACK, port, self.domain)

        try:
            process.wait_ready(ready, PROSODY_READY_TIMEOUT_SECONDS)
        except BaseException:
            process.stop()
            raise
        return self.service

    def _launch(self, port: int) -> ManagedProcess:
        self._port = port
        self._write_config()
        process = ManagedProcess(
            "prosody",
            [find_executable("prosody", "prosody"), "-F", "--config", str(self.config_path)],
            cwd=self.directory,
            log_path=self.log_path,
        )
        process.start()
        return process

    def _write_config(self) -> None:
        self.data_path.mkdir(mode=0o700, exist_ok=True)
        certificates = self.certificates
        modules = ", ".join(_lua_string(module) for module in MODULES)
        config = f"""\
-- Written by lab/prosody.py for one lab run.
run_as_root = {"true" if os.geteuid() == 0 else "false"}
pidfile = {_lua_string(str(self.directory / "prosody.pid"))}
data_path = {_lua_string(str(self.data_path))}
certificates = {_lua_string(str(certificates.cert_path.parent))}
log = {{ {{ levels = {{ min = "info" }}, to = "console", timestamps = true }} }}
interfaces = {{ "{LOOPBACK}" }}
c2s_interfaces = {{ "{LOOPBACK}" }}
c2s_ports = {{ {self._port} }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
modules_enabled = {{ {modules} }}
modules_disabled = {{ "s2s", "s2s_auth_certs" }}
c2s_require_encryption = true
allow_registration = true
authentication = "internal_hashed"
storage = "internal"
ssl = {{
    certificate = {_lua_string(str(certificates.cert_path))};
    key = {_lua_string(str(certificates.key_path))};
}}

VirtualHost {_lua_string(self.domain)}
"""
        self.config_path.write_text(config)


def xmpp_stream_opens(host: str, port: int, domain: str) -> bool:
    """True when ``host``:``port`` answers an XMPP client stream header as server ``domain``."""
    header = (
        f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
        "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    deadline = time.monotonic() + STREAM_PROBE_TIMEOUT_SECONDS
    try:
        with socket.create_connection((host, port), timeout=STREAM_PROBE_TIMEOUT_SECONDS) as connection:
            connection.sendall(header.encode())
            opening = _receive_until(connection, b"<stream:features", deadline)
            # Close the stream and wait until the server has closed the connection: a session
            # still open would make Prosody wait a second for it if it is stopped right after.
            connection.sendall(b"</stream:stream>")
            _receive_until(connection, None, deadline)
    except OSError:  # refused, reset, or timed out: not (yet) our Prosody
        return False
    return f"from='{domain}'".encode() in opening or f'from="{domain}"'.encode() in opening


def _receive_until(connection: socket.socket, marker: bytes | None, deadline: float) -> bytes:
    """What arrives until ``marker`` (or, with None, until the peer closes) or the deadline."""
    received = b""
    while (marker is None or marker not in received) and time.monotonic() < deadline:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def _lua_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'

