"""A real software TPM 2.0 (swtpm, on libtpms) on free loopback ports, for tests and the simulator.

    with Swtpm(state_dir) as tpm:
        tpm.tcti                    # "swtpm:host=127.0.0.1,port=P": give it to firmware.store.tpm

The TPM's whole persistent state (seeds, NV indices, dictionary-attack counter, hierarchy
authorisations) lives in ``state_dir``: a new ``Swtpm`` over the same directory is the same TPM
after a power cycle, one over another directory is a different TPM. Two swtpm processes cannot
share a directory at once (swtpm locks it).

Ports: the TSS's swtpm TCTI always finds the control channel at the command port + 1 (it sends
the locality there before every command), so the two ports are allocated as a consecutive pair.
swtpm serves one client connection at a time: a client that keeps its connection open makes
every other client wait.

Stopping: ``stop()`` first sends TPM2_Shutdown(CLEAR), as the Linux TPM driver does when a phone
shuts down cleanly, then ends the process group. Without it the next start is a non-orderly one,
after which the TPM may count one more dictionary-attack failure (TPM 2.0 Part 1, "Dictionary
Attack Protection"); ``stop(orderly=False)`` models that power loss.
"""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path
from typing import Self

from lab.processes import (
    LOOPBACK,
    PORT_ALLOCATION_ATTEMPTS,
    LabError,
    ManagedProcess,
    find_executable,
    free_tcp_port,
    port_is_free,
    start_on_free_port,
)

log = logging.getLogger(__name__)

SWTPM_READY_TIMEOUT_SECONDS = 10.0
TPM_PROBE_TIMEOUT_SECONDS = 0.5
SHUTDOWN_TIMEOUT_SECONDS = 2.0
# What swtpm prints when it cannot bind its server or control socket.
PORT_TAKEN_MARKER = "Address already in use"
HIGHEST_PORT = 65535
LOG_FILE_NAME = "swtpm.log"

# Raw TPM 2.0 commands (swtpm's server socket takes them unframed): tag TPM_ST_NO_SESSIONS,
# size, command code, parameters; every response starts with tag, size and a 32-bit return code.
TPM_ST_NO_SESSIONS = 0x8001
TPM_CC_GET_RANDOM = 0x0000017B
TPM_CC_SHUTDOWN = 0x00000145
TPM_SU_CLEAR = 0x0000
TPM_RC_SUCCESS = 0
HEADER = struct.Struct(">HII")  # tag, size, command code (command) or return code (response)
PROBE_RANDOM_BYTES = 8


def tpm_command(command_code: int, parameters: bytes = b"") -> bytes:
    """A TPM 2.0 command without sessions, ready to send to swtpm's server socket."""
    size = HEADER.size + len(parameters)
    return HEADER.pack(TPM_ST_NO_SESSIONS, size, command_code) + parameters


GET_RANDOM_COMMAND = tpm_command(TPM_CC_GET_RANDOM, struct.pack(">H", PROBE_RANDOM_BYTES))
SHUTDOWN_CLEAR_COMMAND = tpm_command(TPM_CC_SHUTDOWN, struct.pack(">H", TPM_SU_CLEAR))


def free_port_pair(host: str = LOOPBACK) -> int:
    """A TCP port P on ``host`` such that P and P + 1 are both free now (random P from the kernel)."""
    for _ in range(PORT_ALLOCATION_ATTEMPTS):
        port = free_tcp_port(host)
        if port < HIGHEST_PORT and port_is_free(port + 1, host):
            return port
    raise LabError(f"no two consecutive free TCP ports on {host} after {PORT_ALLOCATION_ATTEMPTS} tries")


def tpm_answers(host: str, port: int, timeout: float = TPM_PROBE_TIMEOUT_SECONDS) -> bool:
    """True when the TPM at ``host``:``port`` (swtpm's server socket) answers TPM2_GetRandom with success.

    A success also proves the TPM has been started up (swtpm's ``startup-clear`` flag).
    """
    try:
        return tpm_response_code(host, port, GET_RANDOM_COMMAND, timeout) == TPM_RC_SUCCESS
    except OSError:  # refused while swtpm starts, or reset
        return False


def tpm_response_code(host: str, port: int, command: bytes, timeout: float) -> int:
    """Send one raw TPM command on a connection of its own; the response's return code (``OSError`` if none)."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(command)
        header = b""
        while len(header) < HEADER.size:
            chunk = connection.recv(HEADER.size - len(header))
            if not chunk:
                raise ConnectionError("the TPM closed the connection without a response")
            header += chunk
    _tag, _size, response_code = HEADER.unpack(header)
    return response_code


class Swtpm:
    """swtpm for the TPM state in ``state_dir`` (created if missing), its log in ``log_path``.

    ``start()`` returns once the TPM answers commands; ``stop()`` is safe to repeat; a stopped
    ``Swtpm`` can be started again (new ports, same TPM). Also a context manager.
    """

    def __init__(self, state_dir: Path | str, *, log_path: Path | str | None = None):
        self.state_dir = Path(state_dir)
        self.log_path = Path(log_path) if log_path is not None else self.state_dir / LOG_FILE_NAME
        self.process: ManagedProcess | None = None
        self.port: int | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def ctrl_port(self) -> int:
        """The control channel's port: always the command port + 1 (where the swtpm TCTI looks)."""
        return self._port() + 1

    @property
    def tcti(self) -> str:
        """The TCTI string that reaches this TPM (tpm2-tss, tpm2-tools ``-T``); ``LabError`` unless running."""
        return f"swtpm:host={LOOPBACK},port={self._port()}"

    def start(self) -> Swtpm:
        """Start swtpm on a free pair of ports; return once the TPM answers.

        ``LabError`` (with swtpm's log tail) when it cannot start, e.g. another swtpm holds ``state_dir``.
        """
        if self.running:
            raise LabError(f"swtpm for {self.state_dir} was already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.process, self.port = start_on_free_port(
            self._launch,
            lambda port: tpm_answers(LOOPBACK, port),
            allocate_port=free_port_pair,
            ready_timeout=SWTPM_READY_TIMEOUT_SECONDS,
            port_taken_marker=PORT_TAKEN_MARKER,
        )
        log.info("swtpm ready at %s, state in %s", self.tcti, self.state_dir)
        return self

    def stop(self, *, orderly: bool = True) -> None:
        """Stop swtpm if it runs (idempotent); ``orderly=False`` skips TPM2_Shutdown, like a power loss."""
        if not self.running:
            return
        if orderly:
            self._shut_down_tpm()
        self.process.stop()

    def log_tail(self) -> str:
        """The last lines of swtpm's log ("" before it was started)."""
        return self.process.log_tail() if self.process is not None else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.tcti if self.running else "stopped"
        return f"Swtpm({str(self.state_dir)!r}, {where})"

    def _port(self) -> int:
        if not self.running:
            raise LabError(f"swtpm for {self.state_dir} is not running: start() it first")
        return self.port

    def _launch(self, port: int) -> ManagedProcess:
        process = ManagedProcess(
            "swtpm",
            [
                find_executable("swtpm", "swtpm"),
                "socket",
                "--tpm2",
                "--tpmstate", f"dir={self.state_dir}",
                "--server", f"type=tcp,port={port},bindaddr={LOOPBACK}",
                "--ctrl", f"type=tcp,port={port + 1},bindaddr={LOOPBACK}",
                # No CMD_INIT needed on the control channel; TPM2_Startup(CLEAR) is sent by swtpm.
                "--flags", "not-need-init,startup-clear",
            ],
            cwd=self.state_dir,
            log_path=self.log_path,
        )
        process.start()
        return process

    def _shut_down_tpm(self) -> None:
        """TPM2_Shutdown(CLEAR), best effort: a TPM that does not answer is stopped all the same."""
        try:
            code = tpm_response_code(LOOPBACK, self.port, SHUTDOWN_CLEAR_COMMAND, SHUTDOWN_TIMEOUT_SECONDS)
        except OSError as error:
            log.warning("swtpm at port %d did not take TPM2_Shutdown (%s): stopping it anyway", self.port, error)
            return
        if code != TPM_RC_SUCCESS:
            log.warning("swtpm refused TPM2_Shutdown (TPM return code 0x%03x): stopping it anyway", code)
