"""A real Kamailio 5.6 SIP registrar and proxy on a free loopback port (UDP and TCP).

The SIP domain is the server's address, 127.0.0.1, so a phone needs no outbound proxy and no DNS:
a user's address of record is ``sip:USER@127.0.0.1:PORT`` (``SipService.uri``), it registers at
``sip:127.0.0.1:PORT`` (``SipService.registrar_uri``) and calls another user by that user's
address of record. Users and passwords are fixed when the server starts (an in-memory htable
filled from the configuration; no database).

Routing: REGISTER and every request that starts a dialog need digest authentication (401 or 407
challenge, realm ``SipService.realm``); the address of record's username must be the
authenticated one. Calls to registered users are relayed statefully with Record-Route, so
in-dialog requests (ACK, BYE, re-INVITE) pass through the proxy; calls to unknown or
unregistered users get 404. An OPTIONS to the server itself (no user part) gets 200 without
authentication: that is the readiness probe.
"""

from __future__ import annotations

import secrets
import socket
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from string import Template

from lab.processes import (
    LOOPBACK,
    LabError,
    ManagedProcess,
    find_executable,
    free_tcp_udp_port,
    start_on_free_port,
)
from lab.users import check_user

KAMAILIO_READY_TIMEOUT_SECONDS = 10.0
OPTIONS_PROBE_TIMEOUT_SECONDS = 0.2
# What Kamailio logs when it cannot bind a listening socket.
PORT_TAKEN_MARKER = "Address already in use"
MODULE_CHECK_FILE = "tm.so"


@dataclass(frozen=True)
class SipService:
    """What a SIP phone needs to register at and call through the lab's Kamailio."""

    host: str
    port: int
    domain: str
    realm: str

    @property
    def registrar_uri(self) -> str:
        """The URI to send REGISTER to (pjsua2: ``AccountConfig.regConfig.registrarUri``)."""
        return f"sip:{self.host}:{self.port}"

    def uri(self, user: str) -> str:
        """The address of record of lab user ``user``: the identity to register and the URI to call."""
        return f"sip:{user}@{self.domain}:{self.port}"


class _KamailioConfig(Template):
    delimiter = "@@"  # "$" is Kamailio's own variable sigil


CONFIG_TEMPLATE = _KamailioConfig("""\
#!KAMAILIO
# Written by lab/kamailio.py for one lab run.
debug=2
log_stderror=yes
children=1
auto_aliases=no
enable_sctp=0
listen=udp:@@host:@@port
listen=tcp:@@host:@@port
mpath="@@module_dir"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "htable.so"
loadmodule "auth.so"

modparam("htable", "htable", "passwords=>size=6;")
modparam("auth", "secret", "@@nonce_secret")

event_route[htable:mod-init] {
@@password_lines
}

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {
        sl_send_reply("200", "OK");
        exit;
    }
    if (has_totag()) {
        route(IN_DIALOG);
        exit;
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    if (is_method("ACK")) {
        exit;
    }
    t_check_trans();
    xlog("L_INFO", "$rm $ru from $fu ($si:$sp)\\n");
    if (uri != myself) {
        sl_send_reply("403", "Relaying Forbidden");
        exit;
    }
    route(AUTHENTICATE);
    if (is_method("REGISTER")) {
        # 0x04: the newest registration replaces the user's earlier ones. One device per lab user:
        # a test phone killed without unregistering must not be forked every later call (the
        # proxy would wait for its dead branch before answering the caller).
        if (!save("location", "0x04")) {
            sl_reply_error();
        }
        exit;
    }
    if ($rU == $null) {
        sl_send_reply("484", "Address Incomplete");
        exit;
    }
    if (!lookup("location")) {
        sl_send_reply("404", "Not Found");
        exit;
    }
    record_route();
    if (!t_relay()) {
        sl_reply_error();
    }
    exit;
}

route[IN_DIALOG] {
    if (loose_route()) {
        if (!t_relay()) {
            sl_reply_error();
        }
        exit;
    }
    if (is_method("ACK")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    sl_send_reply("404", "Not Here");
    exit;
}

# Unknown users are challenged again like wrong passwords: an empty lookup must never authenticate.
route[AUTHENTICATE] {
    if ($au != $null && $sht(passwords=>$au) != $null) {
        if (pv_auth_check("@@realm", "$sht(passwords=>$au)", "0", "1")) {
            consume_credentials();
            return;
        }
    }
    auth_challenge("@@realm", "0");
    exit;
}
""")


class KamailioServer:
    """Kamailio in ``directory`` (which must exist) for the users in ``passwords`` (name -> password)."""

    def __init__(self, directory: Path, passwords: Mapping[str, str]):
        for user, password in passwords.items():
            check_user(user, password)  # both go into the configuration file verbatim
        self.directory = Path(directory)
        self.passwords = dict(passwords)
        self.config_path = self.directory / "kamailio.cfg"
        self.log_path = self.directory / "kamailio.log"
        self.process: ManagedProcess | None = None
        self.service: SipService | None = None

    def start(self) -> SipService:
        """Start Kamailio on a free UDP+TCP port; return once it answers an OPTIONS request with 200."""
        if self.process is not None:
            raise LabError("Kamailio was already started")
        self.process, port = start_on_free_port(
            self._launch,
            lambda port: sip_options_answered(LOOPBACK, port),
            allocate_port=free_tcp_udp_port,
            ready_timeout=KAMAILIO_READY_TIMEOUT_SECONDS,
            port_taken_marker=PORT_TAKEN_MARKER,
        )
        self.service = SipService(LOOPBACK, port, domain=LOOPBACK, realm=LOOPBACK)
        return self.service

    def stop(self) -> None:
        """Stop Kamailio if it runs (idempotent)."""
        if self.process is not None:
            self.process.stop()

    def _launch(self, port: int) -> ManagedProcess:
        self._write_config(port)
        process = ManagedProcess(
            "kamailio",
            [
                find_executable("kamailio", "kamailio"),
                "-DD",  # stay in the foreground (the guardian's child), still forking workers
                "-E",  # log to stderr, which is the log file
                "-f", str(self.config_path),
                "-w", str(self.directory),
            ],
            cwd=self.directory,
            log_path=self.log_path,
        )
        process.start()
        return process

    def _write_config(self, port: int) -> None:
        password_lines = "\n".join(
            f'    $sht(passwords=>{user}) = "{password}";' for user, password in self.passwords.items()
        )
        config = CONFIG_TEMPLATE.substitute(
            host=LOOPBACK,
            port=port,
            module_dir=module_directory(),
            nonce_secret=secrets.token_hex(16),
            password_lines=password_lines,
            realm=LOOPBACK,
        )
        self.config_path.touch(mode=0o600)  # it holds the passwords
        self.config_path.write_text(config)


def module_directory() -> Path:
    """Where this machine's Kamailio modules are (Debian multiarch path first)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "*"
    candidates = [
        *sorted(glob(f"/usr/lib/{multiarch}/kamailio/modules")),
        *sorted(glob("/usr/lib/*/kamailio/modules")),
        "/usr/lib/kamailio/modules",
        "/usr/lib64/kamailio/modules",
        "/usr/local/lib64/kamailio/modules",
        "/usr/local/lib/kamailio/modules",
    ]
    for candidate in candidates:
        if (Path(candidate) / MODULE_CHECK_FILE).is_file():
            return Path(candidate)
    raise LabError("Kamailio's modules were not found (Debian package 'kamailio'; ./byline setup installs it)")


def sip_options_answered(host: str, port: int) -> bool:
    """True when an OPTIONS request over UDP to ``sip:host:port`` gets a 200 response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        probe.settimeout(OPTIONS_PROBE_TIMEOUT_SECONDS)
        local_port = probe.getsockname()[1]
        call_id = f"lab-probe-{secrets.token_hex(8)}"
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{local_port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:lab-probe@{host}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        try:
            probe.sendto(request.encode(), (host, port))
            while True:
                response = probe.recv(65535).decode(errors="replace")
                if call_id in response:
                    return response.startswith("SIP/2.0 200 ")
        except OSError:  # timeout, or ICMP port unreachable while nothing listens yet
            return False
