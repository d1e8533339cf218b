"""The network unit: how the phone is connected, and its Wi-Fi through wpa_supplicant.

Contract:

- Every NETWORK_POLL_S (and at once when wpa_supplicant reports a connection change) it looks at
  the interfaces and posts NetworkShown when what it would say changed: a wired interface by its
  IPv4 address or "no cable"; a Wi-Fi interface by the network it is on and its address, or by
  wpa_supplicant's state ("scanning", "disconnected").
- Wi-Fi interfaces are the control sockets in ``network.wpa_control_dir`` (wpa_supplicant runs as
  root, one per interface; the phone is its client). ``show(state)`` keeps every wpa_supplicant's
  networks equal to the unlocked profile's Wi-Fi networks; a phone locked since boot or wiped has
  none, so before the PIN the phone joins no network and wpa_supplicant holds no key.
- ScanWifi scans on every Wi-Fi interface and answers WifiScanned (strongest first, one per name,
  hidden ones left out) or NetworkFailed. JoinWifi derives the WPA key (PBKDF2, off the loop)
  and answers WifiKeyMade; the state keeps that network in the profile and ``show`` joins it. The
  passphrase goes no further than the derivation.
- Nothing here ever stops the phone: wpa_supplicant's absence or failures are shown, not raised.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from firmware import effects as fx
from firmware.config import Config
from firmware.network.wpa import Bss, WpaControl, WpaError, control_sockets, printf_decode, wpa_psk
from firmware.profile import ProfileError, WifiNetwork, make_wifi_network, wifi_name
from firmware.state import PhoneState
from firmware.units import GuardedTasks, Unit

log = logging.getLogger(__name__)

NETWORK_POLL_S = 2.0
SCAN_WAIT_S = 20.0
"""A bound on a scan before its results are read anyway: a dual-band scan takes 3-6 s on a Pi,
8 s on QEMU's emulated radios; it normally ends with wpa_supplicant's SCAN-RESULTS event."""
SCAN_SHOWN = 12
STOP_FORGET_S = 2.0
SYS_CLASS_NET = Path("/sys/class/net")
SIOCGIFADDR = 0x8915
P2P_DEVICE_PREFIX = "p2p-dev-"
"""wpa_supplicant's Wi-Fi Direct device sockets: not an interface the phone joins networks on."""
WPA_STATES = {"COMPLETED": "connected", "SCANNING": "scanning", "DISCONNECTED": "disconnected",
              "INACTIVE": "no network", "ASSOCIATING": "joining", "ASSOCIATED": "joining",
              "4WAY_HANDSHAKE": "joining", "GROUP_HANDSHAKE": "joining", "AUTHENTICATING": "joining",
              "INTERFACE_DISABLED": "off"}


def ipv4_address(interface: str) -> str:
    """The interface's IPv4 address, or "" when it has none (or does not exist)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", interface.encode()[:15]))
        except OSError:
            return ""
    return socket.inet_ntoa(answer[20:24])


def wired_lines(sys_class_net: Path = SYS_CLASS_NET) -> list[str]:
    """One line per wired interface: a physical one always ("no cable" when down), a virtual one
    only when it has an address (a PC's bridges and tunnels say nothing to the owner)."""
    lines = []
    for path in sorted(sys_class_net.iterdir()) if sys_class_net.is_dir() else ():
        name = path.name
        if name == "lo" or (path / "wireless").exists() or (path / "phy80211").exists():
            continue
        address = ipv4_address(name)
        if address:
            lines.append(f"{name} {address}")
        elif (path / "device").exists():
            carrier = _read(path / "carrier")
            lines.append(f"{name} {'no address' if carrier == '1' else 'no cable'}")
    return lines


def strongest_by_name(found: list[Bss]) -> tuple[fx.WifiSeen, ...]:
    """One entry per SSID (its strongest access point), strongest first, hidden networks left out."""
    best: dict[bytes, Bss] = {}
    for bss in found:
        if bss.ssid and (bss.ssid not in best or bss.signal_dbm > best[bss.ssid].signal_dbm):
            best[bss.ssid] = bss
    ranked = sorted(best.values(), key=lambda b: -b.signal_dbm)[:SCAN_SHOWN]
    return tuple(fx.WifiSeen(b.ssid, b.secured, b.signal_dbm) for b in ranked)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class NetworkUnit(Unit):
    name = "network"
    section = "network"
    performs = fx.NETWORK_EFFECTS

    def __init__(self, config: Config, *, scan_wait_s: float = SCAN_WAIT_S):
        self._control_dir = Path(config["network.wpa_control_dir"]) if config["network.wpa_control_dir"] else None
        self._client_dir_setting = config["network.client_dir"]
        self._scan_wait_s = scan_wait_s
        self._client_dir: Path | None = None
        self._own_client_dir: tempfile.TemporaryDirectory | None = None
        self._post: Callable[[object], None] | None = None
        self._controls: dict[str, WpaControl] = {}
        self._applied: dict[str, tuple[WifiNetwork, ...]] = {}
        self._unreachable: set[str] = set()
        self._problem = ""
        self._wanted: tuple[WifiNetwork, ...] = ()
        self._shown: tuple[str, ...] | None = None
        self._wake = asyncio.Event()
        self._scan_finished: asyncio.Event | None = None
        self._scan_failed = False
        self._tasks = GuardedTasks("network", self._failed, expected=(WpaError, OSError))

    def start(self, post: Callable[[object], None]) -> None:
        self._post = post
        if self._client_dir_setting:
            self._client_dir = Path(self._client_dir_setting)
        else:
            self._own_client_dir = tempfile.TemporaryDirectory(prefix="byline-wpa-")
            self._client_dir = Path(self._own_client_dir.name)
        self._tasks.spawn(self._watch())

    async def stop(self) -> None:
        """Forget every network in wpa_supplicant (its keys leave with the phone), then close."""
        self._tasks.cancel()
        for control in self._controls.values():
            try:
                await asyncio.wait_for(control.remove_network("all"), STOP_FORGET_S)
                await asyncio.wait_for(control.disconnect(), STOP_FORGET_S)
            except (WpaError, asyncio.TimeoutError):
                pass
            control.close()
        self._controls.clear()
        if self._own_client_dir is not None:
            self._own_client_dir.cleanup()
            self._own_client_dir = None

    def show(self, state: PhoneState) -> None:
        wanted = state.profile.networks if state.profile is not None else ()
        if wanted != self._wanted:
            self._wanted = wanted
            self._wake.set()

    def perform(self, request) -> None:
        if isinstance(request, fx.ScanWifi):
            self._tasks.spawn(self._scan())
        elif isinstance(request, fx.JoinWifi):
            self._tasks.spawn(self._join(request))

    # The watch: interfaces, wpa_supplicant's networks, what the screen says.

    async def _watch(self) -> None:
        while True:
            self._wake.clear()  # before looking: a change during the look wakes the next one at once
            try:
                await self._look()
                self._problem = ""
            except OSError as e:  # /sys or the control directory unreadable: said once, tried again next time
                if str(e) != self._problem:
                    self._problem = str(e)
                    log.warning("network: %s", e)
            try:
                await asyncio.wait_for(self._wake.wait(), NETWORK_POLL_S)
            except asyncio.TimeoutError:
                pass

    async def _look(self) -> None:
        await self._follow_interfaces()
        for interface, control in list(self._controls.items()):
            try:
                await self._apply(interface, control)
            except WpaError as e:
                log.warning("network: %s: %s", interface, e)
                self._drop(interface)
        await self._show_status()

    async def _follow_interfaces(self) -> None:
        sockets = control_sockets(self._control_dir) if self._control_dir else []
        present = {path.name: path for path in sockets if not path.name.startswith(P2P_DEVICE_PREFIX)}
        for interface in [i for i in self._controls if i not in present]:
            self._drop(interface)
        for interface, path in present.items():
            if interface in self._controls:
                continue
            control = WpaControl(path, self._client_dir, on_event=self._on_event)
            try:
                await control.open()
                await control.attach()
            except WpaError as e:
                if interface not in self._unreachable:  # said once, tried again every look
                    log.warning("network: %s: %s", interface, e)
                    self._unreachable.add(interface)
                control.close()
                continue
            log.info("network: Wi-Fi on %s", interface)
            self._unreachable.discard(interface)
            self._controls[interface] = control

    def _drop(self, interface: str) -> None:
        control = self._controls.pop(interface, None)
        self._applied.pop(interface, None)
        if control is not None:
            control.close()

    async def _apply(self, interface: str, control: WpaControl) -> None:
        """Make wpa_supplicant's networks the profile's (the newest has the highest priority)."""
        wanted = self._wanted
        if self._applied.get(interface) == wanted:
            return
        await control.remove_network("all")
        for priority, network in enumerate(wanted, start=1):
            await control.add_network(network.ssid, network.psk, priority=priority)
        if wanted:
            await control.reconnect()
        else:
            await control.disconnect()
        self._applied[interface] = wanted
        log.info("network: %s knows %d Wi-Fi network(s)", interface, len(wanted))

    async def _show_status(self) -> None:
        lines = wired_lines()
        for interface, control in list(self._controls.items()):
            try:
                status = await control.status()
            except WpaError as e:
                log.warning("network: %s: %s", interface, e)
                self._drop(interface)
                continue
            lines += self._wifi_lines(interface, status)
        shown = tuple(lines)
        if shown != self._shown:
            self._shown = shown
            self._post(fx.NetworkShown(shown))

    @staticmethod
    def _wifi_lines(interface: str, status: dict[str, str]) -> list[str]:
        state = status.get("wpa_state", "")
        if state != "COMPLETED":
            return [f"{interface} {WPA_STATES.get(state, state.lower() or 'unknown')}"]
        try:
            name = wifi_name(printf_decode(status.get("ssid", "")))
        except WpaError:
            name = "?"
        address = ipv4_address(interface)
        return [f"{interface} {name}", f"{interface} {address or 'no address yet'}"]

    def _on_event(self, level: int, text: str) -> None:
        if text.startswith("CTRL-EVENT-SCAN-RESULTS") and self._scan_finished is not None:
            self._scan_finished.set()
        elif text.startswith("CTRL-EVENT-SCAN-FAILED") and self._scan_finished is not None:
            self._scan_failed = True
            self._scan_finished.set()
        elif text.startswith(("CTRL-EVENT-CONNECTED", "CTRL-EVENT-DISCONNECTED", "CTRL-EVENT-SSID-TEMP-DISABLED")):
            self._wake.set()

    # Requests.

    async def _scan(self) -> None:
        controls = list(self._controls.values())
        if not controls:
            self._post(fx.NetworkFailed("No Wi-Fi here"))
            return
        self._scan_finished, self._scan_failed = asyncio.Event(), False
        scanning, found, waited_out = [], [], False
        try:
            for control in controls:  # one interface's refusal is not the scan's
                try:
                    await control.scan()
                    scanning.append(control)
                except WpaError as e:
                    log.warning("network: %s: %s", control.interface, e)
            if scanning:
                try:
                    await asyncio.wait_for(self._scan_finished.wait(), self._scan_wait_s)
                except asyncio.TimeoutError:
                    waited_out = True  # read what there is
            for control in scanning:
                try:
                    found += await control.scan_results()
                except WpaError as e:
                    log.warning("network: %s: %s", control.interface, e)
        finally:
            self._scan_finished = None
        log.info("network: scan on %s: %d access point(s)%s%s", ", ".join(c.interface for c in scanning) or "nothing",
                 len(found), " (wpa_supplicant said it failed)" if self._scan_failed else "",
                 f" (no results event within {self._scan_wait_s} s)" if waited_out else "")
        if not found and (self._scan_failed or not scanning):
            self._post(fx.NetworkFailed("Wi-Fi scan failed"))
            return
        self._post(fx.WifiScanned(strongest_by_name(found)))

    async def _join(self, request: fx.JoinWifi) -> None:
        psk = None
        try:
            if request.passphrase is not None:
                psk = await asyncio.get_running_loop().run_in_executor(None, wpa_psk, request.passphrase, request.ssid)
            network = make_wifi_network(request.ssid, psk)
        except (ValueError, ProfileError) as e:
            self._post(fx.NetworkFailed(str(e)))
            return
        self._post(fx.WifiKeyMade(network))

    def _failed(self, error: Exception) -> None:
        if self._post is not None:
            self._post(fx.NetworkFailed(f"Network: {type(error).__name__}"))
