"""The network unit against a real wpa_supplicant (wired driver, private namespace): the profile's
Wi-Fi networks are given to wpa_supplicant only while the phone is unlocked, keys are derived
from passphrases (only the key travels), and what the screen is told follows the system."""

import asyncio
import json
import socket
import subprocess
import time

from firmware import effects as fx
from firmware.network.wpa import Bss
from firmware.network_unit import NetworkUnit, strongest_by_name, wired_lines
from firmware.profile import Profile, WifiNetwork
from firmware.scenario import headless_config
from firmware.state import PhoneState
from helpers.wpa_supplicant import INTERFACE, running_supplicant

WAIT_S = 10.0
HOME = WifiNetwork(b'Home "net" \xff', bytes(range(32)))
OPEN = WifiNetwork(b"Cafe", None)
PASSPHRASE = "ThisIsAPassword"
IEEE_VECTOR_PSK = bytes.fromhex("0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af")


def unlocked(*networks: WifiNetwork) -> PhoneState:
    return PhoneState(profile=Profile(networks=networks), locked=False)


class Phone:
    """A started NetworkUnit and what it posted; ``known()`` asks wpa_supplicant itself."""

    def __init__(self, supplicant=None, control_dir=None):
        self.supplicant = supplicant
        control_dir = supplicant.control_dir if supplicant else control_dir
        client_dir = supplicant.client_dir if supplicant else control_dir
        config = headless_config(network__wpa_control_dir=str(control_dir), network__client_dir=str(client_dir))
        self.unit = NetworkUnit(config, scan_wait_s=0.5)
        self.posted: list = []

    def start(self) -> "Phone":
        self.unit.start(self.posted.append)
        return self

    async def wait_for(self, kind, predicate=lambda event: True, timeout: float = WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.posted if isinstance(e, kind) and predicate(e)]
            if found:
                return found[-1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {kind.__name__} within {timeout} s; posted: {self.posted}")

    async def known(self) -> list[bytes]:
        async with self.supplicant.opened() as control:
            return [network.ssid for network in await control.list_networks()]

    async def until_known(self, expected: list[bytes]) -> None:
        deadline = time.monotonic() + WAIT_S
        while (known := await self.known()) != expected:
            assert time.monotonic() < deadline, f"wpa_supplicant knows {known}, not {expected}"
            await asyncio.sleep(0.05)


def test_wpa_supplicant_knows_the_profiles_networks_only_while_unlocked(tmp_path):
    async def scenario():
        with running_supplicant(tmp_path) as supplicant:
            phone = Phone(supplicant).start()
            try:
                phone.unit.show(PhoneState())  # locked since boot: no profile
                await phone.wait_for(fx.NetworkShown)
                assert await phone.known() == []
                phone.unit.show(unlocked(HOME, OPEN))
                await phone.until_known([HOME.ssid, OPEN.ssid])
                async with supplicant.opened() as control:
                    assert await control.request("GET_NETWORK 0 psk") == "*", "the key is not readable back"
                shown = await phone.wait_for(fx.NetworkShown, lambda e: any(INTERFACE in line for line in e.lines))
                assert any(line.startswith(f"{INTERFACE} ") for line in shown.lines), shown
                phone.unit.show(PhoneState())  # wiped
                await phone.until_known([])
                phone.unit.show(unlocked(OPEN))
                await phone.until_known([OPEN.ssid])
                await phone.wait_for(fx.NetworkShown, lambda e: f"{INTERFACE} Cafe" in e.lines)
            finally:
                await phone.unit.stop()
            assert await phone.known() == [], "stopping takes the networks back"
            log = supplicant.log()
            assert HOME.psk.hex() not in log and "name='psk'" in log
    asyncio.run(scenario())


def test_a_passphrase_becomes_a_key_and_a_bad_one_is_refused_without_being_repeated(tmp_path):
    async def scenario():
        phone = Phone(control_dir=tmp_path).start()
        try:
            phone.unit.perform(fx.JoinWifi(b"ThisIsASSID", PASSPHRASE))
            made = await phone.wait_for(fx.WifiKeyMade)
            assert made.network == WifiNetwork(b"ThisIsASSID", IEEE_VECTOR_PSK)
            assert PASSPHRASE not in repr(made)
            phone.unit.perform(fx.JoinWifi(b"Open", None))
            assert (await phone.wait_for(fx.WifiKeyMade, lambda e: e.network.ssid == b"Open")).network.psk is None
            phone.unit.perform(fx.JoinWifi(b"X", "short!"))
            failed = await phone.wait_for(fx.NetworkFailed)
            assert "8 to 63" in failed.message and "short!" not in failed.message
        finally:
            await phone.unit.stop()
    asyncio.run(scenario())


def test_wifi_direct_device_sockets_are_not_interfaces(tmp_path):
    async def scenario():
        with running_supplicant(tmp_path) as supplicant, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as p2p:
            p2p.bind(str(supplicant.control_dir / f"p2p-dev-{INTERFACE}"))
            phone = Phone(supplicant).start()
            try:
                shown = await phone.wait_for(fx.NetworkShown, lambda e: any(INTERFACE in line for line in e.lines))
                assert not any(line.startswith("p2p-dev-") for line in shown.lines), shown
            finally:
                await phone.unit.stop()
    asyncio.run(scenario())


def test_scanning_without_wifi_says_so_and_with_it_answers(tmp_path):
    async def scenario():
        nowhere = Phone(control_dir=tmp_path).start()
        try:
            nowhere.unit.perform(fx.ScanWifi())
            assert (await nowhere.wait_for(fx.NetworkFailed)).message == "No Wi-Fi here"
        finally:
            await nowhere.unit.stop()
        with running_supplicant(tmp_path) as supplicant:
            phone = Phone(supplicant).start()
            try:
                await phone.wait_for(fx.NetworkShown, lambda e: any(INTERFACE in line for line in e.lines))
                phone.unit.perform(fx.ScanWifi())
                assert await phone.wait_for(fx.WifiScanned) == fx.WifiScanned(())  # a cable has no networks
            finally:
                await phone.unit.stop()
    asyncio.run(scenario())


def test_a_vanished_wpa_supplicant_costs_its_lines_not_the_unit(tmp_path):
    async def scenario():
        with running_supplicant(tmp_path) as supplicant:
            phone = Phone(supplicant).start()
            try:
                await phone.wait_for(fx.NetworkShown, lambda e: any(INTERFACE in line for line in e.lines))
                supplicant.stop()
                (supplicant.control_dir / INTERFACE).unlink(missing_ok=True)
                await phone.wait_for(fx.NetworkShown, lambda e: not any(INTERFACE in line for line in e.lines))
            finally:
                await phone.unit.stop()
    asyncio.run(scenario())


def test_wired_lines_name_every_interface_with_an_address():
    addresses = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                                          check=True).stdout)
    expected = {f"{link['ifname']} {a['local']}" for link in addresses if link["ifname"] != "lo"
                for a in link.get("addr_info", [])[:1]}
    assert expected <= set(wired_lines()), wired_lines()


def test_one_entry_per_network_name_strongest_first_hidden_ones_left_out():
    found = [Bss("aa:00:00:00:00:01", 2412, -70, "[WPA2-PSK-CCMP][ESS]", b"Home"),
             Bss("aa:00:00:00:00:02", 5180, -40, "[WPA2-PSK-CCMP][ESS]", b"Home"),
             Bss("aa:00:00:00:00:03", 2412, -60, "[ESS]", b"Cafe"),
             Bss("aa:00:00:00:00:04", 2412, -30, "[WPA2-PSK-CCMP][ESS]", b"")]
    assert strongest_by_name(found) == (fx.WifiSeen(b"Home", True, -40), fx.WifiSeen(b"Cafe", False, -60))
