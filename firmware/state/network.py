"""The Network list (how the phone is connected, the Wi-Fi networks it knows) and joining Wi-Fi.

Contract: pure functions of (state, action or event) to state. A passphrase lives in the state only
while the editor holds it: committing it becomes a JoinWifi request, and what comes back and is
kept (WifiKeyMade) carries the derived key, never the passphrase. Scanning is requested, never done.
"""

from __future__ import annotations

from dataclasses import replace

from firmware import effects as fx
from firmware.profile import NETWORKS_RECORD, PASSPHRASE_MAX_CHARS, PASSPHRASE_MIN_CHARS, Profile, passphrase_problem, wifi_name
from firmware.state.model import TITLE_MAX, Item, PhoneState, _open_choices, _open_editor, _request, _save_part

NETWORK_TITLE = "Network"
WIFI_TITLE = "Wi-Fi networks"
NETWORK_VERBS = frozenset({"network", "scan_wifi", "pick_wifi", "forget_wifi"})


def network_items(state: PhoneState) -> tuple[Item, ...]:
    """What the Network list shows: each interface's line, then finding and forgetting Wi-Fi."""
    networks = (state.profile or Profile()).networks
    status = tuple(Item(line) for line in state.network_lines) or (Item("Not connected"),)
    known = tuple(Item(f"Forget {n.name}", ("forget_wifi", i)) for i, n in enumerate(networks))
    return (*status, Item("Find Wi-Fi", ("scan_wifi",)), *known)


def wifi_items(state: PhoneState) -> tuple[Item, ...]:
    if not state.wifi_seen:
        return (Item("Searching..."),)
    return tuple(Item(f"{'*' if seen.secured else ' '}{wifi_name(seen.ssid)} {seen.signal_dbm}",
                      ("pick_wifi", seen.ssid.hex(), seen.secured)) for seen in state.wifi_seen)


def _network_action(state: PhoneState, verb: str, args: tuple) -> PhoneState:
    if verb == "network":
        return _open_choices(state, NETWORK_TITLE, network_items(state))
    if verb == "scan_wifi":
        state = replace(state, wifi_seen=())
        return _request(_open_choices(state, WIFI_TITLE, wifi_items(state)), fx.ScanWifi())
    if verb == "pick_wifi":
        ssid_hex, secured = args
        name = wifi_name(bytes.fromhex(ssid_hex))
        if secured:
            return _open_editor(state, ("wifi_key", ssid_hex), f"Key {name}"[:TITLE_MAX], "", secret=True)
        return _request(replace(state, toast=f"Joining {name}"), fx.JoinWifi(bytes.fromhex(ssid_hex), None))
    if verb == "forget_wifi":
        (index,) = args
        networks = (state.profile or Profile()).networks
        if index >= len(networks):
            return state
        kept = networks[:index] + networks[index + 1:]
        state = _save_part(replace(state, toast=f"Forgot {networks[index].name}"), NETWORKS_RECORD, kept)
        return _open_choices(state, NETWORK_TITLE, network_items(state))
    return state


def _commit_wifi_key(state: PhoneState, ssid_hex: str, passphrase: str) -> PhoneState:
    if passphrase_problem(passphrase):
        return replace(state, toast=f"Key: {PASSPHRASE_MIN_CHARS}-{PASSPHRASE_MAX_CHARS} letters")
    ssid = bytes.fromhex(ssid_hex)
    return _request(replace(state, screen="section", editor=None, toast=f"Joining {wifi_name(ssid)}"),
                    fx.JoinWifi(ssid, passphrase))


def _wifi_key_made(state: PhoneState, event: fx.WifiKeyMade) -> PhoneState:
    """Keep the network (replacing one of the same name); the network unit joins what the profile lists."""
    if state.profile is None:
        return state  # locked or wiped meanwhile: nothing to keep it in
    network = event.network
    networks = tuple(n for n in state.profile.networks if n.ssid != network.ssid) + (network,)
    return _save_part(replace(state, toast=f"Saved {network.name}"), NETWORKS_RECORD, networks)


def _wifi_scanned(state: PhoneState, event: fx.WifiScanned) -> PhoneState:
    state = replace(state, wifi_seen=event.networks)
    if not event.networks:
        return _refresh(state, WIFI_TITLE, (Item("None found"), Item("Find again", ("scan_wifi",))))
    return _refresh(state, WIFI_TITLE, wifi_items(state))


def _network_shown(state: PhoneState, event: fx.NetworkShown) -> PhoneState:
    if event.lines == state.network_lines:
        return state
    state = replace(state, network_lines=event.lines)
    return _refresh(state, NETWORK_TITLE, network_items(state))


def _network_failed(state: PhoneState, event: fx.NetworkFailed) -> PhoneState:
    return _refresh(replace(state, toast=event.message), WIFI_TITLE, (Item(event.message),))


def _refresh(state: PhoneState, title: str, items: tuple[Item, ...]) -> PhoneState:
    """New lines for the list titled ``title`` if it is the one open. The selection stays on the
    same item (a line appearing above it must not move the owner's OK onto another), else where it was."""
    choices = state.choices
    if state.screen != "list" or choices is None or choices.title != title[:TITLE_MAX]:
        return state
    current = choices.items[choices.selected] if choices.selected < len(choices.items) else None
    same = [i for i, item in enumerate(items) if current is not None and item == current]
    selected = same[0] if same else min(choices.selected, len(items) - 1)
    return replace(state, choices=replace(choices, items=items, selected=selected))
