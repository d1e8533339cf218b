"""The Network list and joining Wi-Fi in the state machine: what is requested, what is kept, and
that a passphrase goes no further than the JoinWifi request."""

from dataclasses import replace

from firmware import effects as fx
from firmware.profile import NETWORKS_RECORD, Profile, WifiNetwork
from firmware.state import MENU, section_items, step
from firmware.text_entry import keys_for
from test_state import press, take, unlocked

HOME = WifiNetwork(b"Home \xff", bytes(range(32)))
CAFE = fx.WifiSeen(b"Caf\xc3\xa9", secured=False, signal_dbm=-71)
OFFICE = fx.WifiSeen(b"Office", secured=True, signal_dbm=-48)
PASSPHRASE = "correct horse 7"


def network_list(state):
    """Settings, down to "Network", OK."""
    state = press(state, "ok", str(MENU.index("Settings") + 1))
    items = [item.label for item in section_items(state)]
    return press(state, *["down"] * items.index("Network"), "ok")


def scanned(*seen):
    """The Wi-Fi list after a scan that found ``seen`` (the scan request taken out)."""
    state, _ = take(press(network_list(unlocked()), "down", "ok"))
    return step(state, fx.WifiScanned(seen))


def labels(state):
    return [item.label for item in state.choices.items]


def test_the_network_list_shows_each_interface_and_follows_changes():
    state = network_list(unlocked(Profile(networks=(HOME,))))
    assert state.screen == "list" and state.choices.title == "Network"
    assert labels(state) == ["Not connected", "Find Wi-Fi", "Forget Home ?"]
    state = step(state, fx.NetworkShown(("eth0 10.0.2.15", "wlan0 scanning")))
    assert labels(state)[:2] == ["eth0 10.0.2.15", "wlan0 scanning"]
    assert step(state, fx.NetworkShown(("eth0 10.0.2.15", "wlan0 scanning"))) is state, "nothing new, no redraw"


def test_a_line_appearing_above_keeps_the_selection_on_its_item():
    state = press(network_list(unlocked(Profile(networks=(HOME,)))), "down")
    assert state.choices.items[state.choices.selected].label == "Find Wi-Fi"
    state = step(state, fx.NetworkShown(("eth0 10.0.2.15", "wlan0 no network")))
    assert state.choices.items[state.choices.selected].label == "Find Wi-Fi"
    state, requests = take(press(state, "ok"))
    assert requests == (fx.ScanWifi(),)


def test_find_wifi_scans_then_lists_networks_strongest_first():
    state, requests = take(press(network_list(unlocked()), "down", "ok"))
    assert requests == (fx.ScanWifi(),) and labels(state) == ["Searching..."]
    state = step(state, fx.WifiScanned((OFFICE, CAFE)))
    assert labels(state) == ["*Office -48", " Café -71"]
    assert step(state, fx.WifiScanned(())).choices.items[0].label == "None found"
    failed = step(state, fx.NetworkFailed("No Wi-Fi here"))
    assert labels(failed) == ["No Wi-Fi here"] and failed.toast == "No Wi-Fi here"


def test_joining_a_secured_network_asks_its_key_and_keeps_only_what_comes_back():
    state = scanned(OFFICE, CAFE)
    state = press(state, "ok")  # Office
    assert state.screen == "edit" and state.editor.entry.secret and state.editor.label == "Key Office"
    state, requests = take(press(state, *keys_for(PASSPHRASE), "ok"))
    assert requests == (fx.JoinWifi(b"Office", PASSPHRASE),)
    assert state.editor is None and PASSPHRASE not in repr(state) and PASSPHRASE not in repr(requests)
    made = WifiNetwork(b"Office", b"k" * 32)
    state, requests = take(step(state, fx.WifiKeyMade(made)))
    assert state.profile.networks == (made,) and requests == (fx.SaveProfilePart(NETWORKS_RECORD, (made,)),)
    again = WifiNetwork(b"Office", b"n" * 32)
    assert take(step(state, fx.WifiKeyMade(again)))[0].profile.networks == (again,), "one entry per name"


def test_a_key_of_the_wrong_length_stays_in_the_editor():
    state = scanned(OFFICE)
    state, requests = take(press(state, "ok", *keys_for("short"), "ok"))
    assert requests == () and state.screen == "edit" and state.toast.startswith("Key: 8-63")


def test_an_open_network_is_joined_without_a_key():
    state = scanned(OFFICE, CAFE)
    state, requests = take(press(state, "down", "ok"))
    assert requests == (fx.JoinWifi(CAFE.ssid, None),)


def test_forgetting_a_network_saves_the_rest():
    other = WifiNetwork(b"Other", None)
    state = network_list(unlocked(Profile(networks=(HOME, other))))
    state, requests = take(press(state, "down", "down", "ok"))  # Forget Home
    assert state.profile.networks == (other,) and requests == (fx.SaveProfilePart(NETWORKS_RECORD, (other,)),)
    assert labels(state) == ["Not connected", "Find Wi-Fi", "Forget Other"]


def test_a_key_made_after_a_wipe_is_not_kept():
    state = replace(unlocked(), profile=None)
    assert step(state, fx.WifiKeyMade(HOME)) is state
