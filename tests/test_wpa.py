"""firmware.network.wpa against a real wpa_supplicant, and its parsers against realistic answers.

Each supplicant test starts wpa_supplicant 2.x with the ``wired`` driver on a veth interface
inside a private user+network namespace (no root, no wireless hardware) and talks to it through
its real control socket: no part of wpa_supplicant is mocked. Its -dd debug log is printed on
teardown, so a failing test shows it.
"""

import asyncio
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from firmware.network.wpa import (Bss, WpaControl, WpaError, control_sockets, parse_list_networks, parse_scan_results,
                                  parse_status, printf_decode, wpa_psk)
from firmware.profile import wifi_name
from helpers.wpa_supplicant import INTERFACE, STOP_TIMEOUT_S, running_supplicant

EVENT_TIMEOUT_S = 5.0
SHORT_TIMEOUT_S = 0.3

# Every byte wpa_supplicant's printf_encode treats specially, plus invalid UTF-8.
AWKWARD_SSID = b'say "hi" \\ a\tb \xff\nend'
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def supplicant(tmp_path):
    """wpa_supplicant (wired driver) on veth v0 in a private user+network namespace, stopped afterwards."""
    with running_supplicant(tmp_path) as running:
        yield running


class EventRecorder:
    """An on_event callback that records events and lets a test wait (bounded) for one."""

    def __init__(self):
        self.events: list[tuple[int, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, level: int, text: str) -> None:
        self.events.append((level, text))
        self._changed.set()

    def texts(self) -> list[str]:
        return [text for _, text in self.events]

    async def wait_for(self, prefix: str, count: int = 1) -> str:
        """The count-th event starting with prefix, once it came (at most EVENT_TIMEOUT_S)."""
        async def seen():
            while True:
                matching = [text for text in self.texts() if text.startswith(prefix)]
                if len(matching) >= count:
                    return matching[count - 1]
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(seen(), EVENT_TIMEOUT_S)


# --- wpa_psk ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("passphrase", "ssid", "expected"), [
    ("password", b"IEEE", "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"),
    ("ThisIsAPassword", b"ThisIsASSID", "0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af"),
])
def test_wpa_psk_matches_the_ieee_802_11i_test_vectors(passphrase, ssid, expected):
    assert wpa_psk(passphrase, ssid).hex() == expected


@pytest.mark.parametrize("passphrase", ["seven77", "x" * 64, "pässwörd-long", "tab\tinside", ""])
def test_wpa_psk_refuses_bad_passphrases_without_repeating_them(passphrase):
    with pytest.raises(ValueError) as refused:
        wpa_psk(passphrase, b"ssid")
    assert passphrase not in str(refused.value) or passphrase == ""


def test_wpa_psk_accepts_the_length_limits():
    assert len(wpa_psk("8" * 8, b"s")) == 32
    assert len(wpa_psk("~" * 63, b"s")) == 32


# --- against wpa_supplicant ------------------------------------------------------------------


def test_awkward_ssid_round_trips_and_only_the_derived_key_reaches_wpa_supplicant(supplicant, caplog):
    caplog.set_level("DEBUG", logger="firmware.network.wpa")
    psk = wpa_psk(PASSPHRASE, AWKWARD_SSID)

    async def scenario():
        async with supplicant.opened() as control:
            assert control.interface == INTERFACE
            network_id = await control.add_network(AWKWARD_SSID, psk, priority=3)
            networks = await control.list_networks()
            assert [(network.network_id, network.ssid) for network in networks] == [(network_id, AWKWARD_SSID)]
            assert await control.request(f"GET_NETWORK {network_id} psk") == "*"
            assert (await control.request(f"GET_NETWORK {network_id} key_mgmt")).strip() == "WPA-PSK"
            assert (await control.request(f"GET_NETWORK {network_id} scan_ssid")).strip() == "1"
            assert (await control.request(f"GET_NETWORK {network_id} priority")).strip() == "3"

    asyncio.run(scenario())
    supplicant.stop()  # flushes its log
    log = supplicant.log()
    assert "SET_NETWORK id=0 name='psk'" in log  # the log is verbose enough to have shown a secret
    assert PASSPHRASE not in log
    ours = caplog.text
    assert ours  # our debug lines were captured, so their cleanliness means something
    assert PASSPHRASE not in ours and psk.hex() not in ours


def test_an_error_about_a_psk_command_does_not_contain_the_key(supplicant):
    psk_hex = wpa_psk(PASSPHRASE, b"somewhere").hex()

    async def scenario():
        async with supplicant.opened() as control:
            with pytest.raises(WpaError, match="refused SET_NETWORK 999 psk") as refused:
                await control.request(f"SET_NETWORK 999 psk {psk_hex}")
            assert psk_hex not in str(refused.value)
            with pytest.raises(WpaError, match="UNKNOWN COMMAND"):
                await control.request("NO_SUCH_COMMAND")

    asyncio.run(scenario())


def test_remove_network_one_and_all(supplicant):
    async def scenario():
        async with supplicant.opened() as control:
            first = await control.add_network(b"first", None)
            second = await control.add_network(b"second", wpa_psk(PASSPHRASE, b"second"))
            third = await control.add_network(b"third", None)
            await control.remove_network(second)
            assert [network.network_id for network in await control.list_networks()] == [first, third]
            await control.remove_network("all")
            assert await control.list_networks() == []
            with pytest.raises(WpaError, match="REMOVE_NETWORK"):
                await control.remove_network(second)

    asyncio.run(scenario())


def test_selecting_an_open_network_connects_with_events(supplicant):
    events = EventRecorder()

    async def scenario():
        async with supplicant.opened(on_event=events, attach=True) as control:
            await control.scan()
            assert await control.scan_results() == []  # the wired driver sees no BSS
            network_id = await control.add_network(b"open net", None)
            await control.select_network(network_id)
            connected = await events.wait_for("CTRL-EVENT-CONNECTED")
            assert f"[id={network_id} " in connected
            status = await control.status()
            assert status["wpa_state"] == "COMPLETED"
            assert printf_decode(status["ssid"]) == b"open net"
            await control.disconnect()
            await events.wait_for("CTRL-EVENT-DISCONNECTED")
            assert (await control.status())["wpa_state"] == "DISCONNECTED"
            await control.reconnect()
            await events.wait_for("CTRL-EVENT-CONNECTED", count=2)
            assert (await control.status())["wpa_state"] == "COMPLETED"

    asyncio.run(scenario())
    assert all(isinstance(level, int) for level, _ in events.events)


def test_an_event_before_an_answer_is_not_taken_for_the_answer(supplicant):
    events = EventRecorder()

    async def scenario():
        async with supplicant.opened(on_event=events, attach=True) as control:
            # wpa_supplicant sends CTRL-EVENT-NETWORK-ADDED before the answer to ADD_NETWORK.
            network_id = await control.add_network(b"evented", None)
            assert network_id == 0
            assert await events.wait_for("CTRL-EVENT-NETWORK-ADDED") == "CTRL-EVENT-NETWORK-ADDED 0"
            # At debug level wpa_supplicant echoes each command as an event before answering it.
            assert (await control.request("LEVEL 2")).strip() == "OK"
            assert (await control.request("NOTE hello")).strip() == "OK"
            assert (2, "Control interface command 'NOTE hello'") in events.events
            assert (await control.request("PING")).strip() == "PONG"

    asyncio.run(scenario())


def test_a_failed_step_removes_the_half_made_network(supplicant):
    """Another client removes the network between ADD_NETWORK and its first SET_NETWORK."""
    interferer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    interferer_path = supplicant.client_dir / "interferer"
    interferer.bind(str(interferer_path))
    interferer.connect(str(supplicant.socket_path))
    interferer.settimeout(EVENT_TIMEOUT_S)

    def remove_on_add(level, text):
        if text.startswith("CTRL-EVENT-NETWORK-ADDED"):
            interferer.send(b"REMOVE_NETWORK all")
            assert interferer.recv(4096).strip() == b"OK"

    async def scenario():
        async with supplicant.opened(on_event=remove_on_add, attach=True) as control:
            with pytest.raises(WpaError, match="refused SET_NETWORK 0 ssid") as refused:
                await control.add_network(b"doomed", wpa_psk(PASSPHRASE, b"doomed"))
            assert "doomed" not in str(refused.value)
            assert await control.list_networks() == []

    try:
        asyncio.run(scenario())
    finally:
        interferer.close()
    supplicant.stop()
    # The interferer's removal, then ours (which wpa_supplicant refuses: nothing is left).
    assert supplicant.log().count("CTRL_IFACE: REMOVE_NETWORK id=0") == 1
    assert supplicant.log().count("CTRL_IFACE: REMOVE_NETWORK all") == 1


def test_a_stopped_supplicant_times_out_naming_the_command(supplicant):
    async def scenario():
        control = supplicant.control(timeout_s=SHORT_TIMEOUT_S)
        await control.open()
        supplicant.signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(WpaError, match=f"no answer from wpa_supplicant on {INTERFACE} to SCAN"):
            await control.scan()
        assert time.monotonic() - started < SHORT_TIMEOUT_S + 1.0
        assert not control.is_open  # a late answer must not become the next request's answer
        with pytest.raises(WpaError, match="not connected"):
            await control.status()
        control.close()
        control.close()

    asyncio.run(scenario())
    assert list(supplicant.client_dir.iterdir()) == []


def test_a_killed_supplicant_fails_requests_naming_the_command(supplicant):
    async def scenario():
        control = supplicant.control(timeout_s=SHORT_TIMEOUT_S)
        await control.open()
        assert len(list(supplicant.client_dir.iterdir())) == 1
        supplicant.signal(signal.SIGKILL)
        supplicant.process.wait(STOP_TIMEOUT_S)
        started = time.monotonic()
        with pytest.raises(WpaError, match="STATUS"):
            await control.status()
        assert time.monotonic() - started < SHORT_TIMEOUT_S + 1.0
        control.close()
        control.close()
        assert list(supplicant.client_dir.iterdir()) == []
        with pytest.raises(WpaError):
            await control.open()  # the socket file is left behind, but nobody answers

    asyncio.run(scenario())


def test_open_on_a_missing_socket_raises(tmp_path):
    control = WpaControl(tmp_path / "nothing-here", tmp_path)
    with pytest.raises(WpaError, match="cannot reach wpa_supplicant on nothing-here"):
        asyncio.run(control.open())
    assert list(tmp_path.iterdir()) == []  # our own socket went away again


# --- parsers ---------------------------------------------------------------------------------

SCAN_RESULTS = (
    "bssid / frequency / signal level / flags / ssid\n"
    "aa:bb:cc:00:00:03\t2437\t-60\t[ESS]\tcaf\\xc3\\xa9\n"
    "aa:bb:cc:00:00:01\t2412\t-70\t[WPA2-PSK-CCMP][ESS]\tHome\n"
    "aa:bb:cc:00:00:02\t5180\t-48\t[WPA2-PSK-CCMP][ESS]\tHome\n"
    "aa:bb:cc:00:00:08\t2412\t-75\t[WPA2-PSK-CCMP][ESS]\tHome\n"
    "aa:bb:cc:00:00:04\t2462\t-80\t[WPA2-SAE-CCMP][ESS]\t\n"
    "this line is not a BSS\n"
    "aa:bb:cc:00:00:05\tnot-a-number\t-30\t[ESS]\tBroken\n"
    "aa:bb:cc:00:00:06\t2412\t-40\t[ESS]\tbad\\q escape\n"
)


def test_parse_scan_results_keeps_the_strongest_bss_per_ssid_strongest_first():
    results = parse_scan_results(SCAN_RESULTS)
    assert [(bss.bssid, bss.ssid) for bss in results] == [
        ("aa:bb:cc:00:00:02", b"Home"), ("aa:bb:cc:00:00:03", "café".encode()), ("aa:bb:cc:00:00:04", b"")]
    home, cafe, hidden = results
    assert home == Bss("aa:bb:cc:00:00:02", 5180, -48, "[WPA2-PSK-CCMP][ESS]", b"Home")
    assert home.secured and hidden.secured and not cafe.secured
    assert wifi_name(cafe.ssid) == "café" and wifi_name(hidden.ssid) == "(hidden)"


@pytest.mark.parametrize("garbage", ["", "FAIL\n", "\t\t\t\t\n", "x" * 1000, "a\tb\tc\td\te\n", "\x00\udcff"])
def test_parse_scan_results_on_garbage_gives_nothing(garbage):
    assert parse_scan_results(garbage) == []


def test_parse_list_networks_and_status():
    networks = parse_list_networks(
        "network id / ssid / bssid / flags\n"
        "0\tHome\tany\t[CURRENT]\n"
        "1\tsay \\\"hi\\\" \\\\ a\\tb \\xff\\nend\tany\t\n"
        "broken line\n")
    assert [(network.network_id, network.ssid, network.flags) for network in networks] == [
        (0, b"Home", "[CURRENT]"), (1, AWKWARD_SSID, "")]
    status = parse_status("wpa_state=COMPLETED\nssid=caf\\xc3\\xa9\nid_str=\nnonsense\nkey=a=b\n")
    assert status == {"wpa_state": "COMPLETED", "ssid": "caf\\xc3\\xa9", "id_str": "", "key": "a=b"}


def test_printf_decode_inverts_printf_encode():
    assert printf_decode('\\\\\\"\\e\\n\\r\\t\\x00\\xFf plain') == b'\\"\x1b\n\r\t\x00\xff plain'


@pytest.mark.parametrize("malformed", ["end\\", "\\x", "\\x4", "\\xg0", "\\q", "tab\tinside", "caf\u00e9"])
def test_printf_decode_refuses_malformed_escapes(malformed):
    with pytest.raises(WpaError):
        printf_decode(malformed)


def test_control_sockets_lists_only_sockets(tmp_path):
    with tempfile.TemporaryDirectory(prefix="wpa-") as short_dir:
        control_dir = Path(short_dir)
        bound = []
        for name in ("wlan1", "wlan0", ".hidden"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(control_dir / name))
            bound.append(sock)
        (control_dir / "plain-file").write_text("")
        (control_dir / "a-directory").mkdir()
        try:
            assert control_sockets(control_dir) == [control_dir / "wlan0", control_dir / "wlan1"]
        finally:
            for sock in bound:
                sock.close()
    assert control_sockets(tmp_path / "missing") == []
