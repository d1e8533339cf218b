#!/usr/bin/python3
"""The image's self-test (byline-selftest.service, only with byline.selftest=1).

Waits for byline.service and its first captured frame, checks the running system, then plays
the owner on the phone's keys (the socket /run/byline/keys) while reading what the screen says
(/run/byline/screen.txt), according to ``byline.boot=N`` on the kernel command line:

- boot 1 (first boot): the phone asks for a new PIN; after it is chosen, the data partition is
  LUKS2 and mounted, and a setting changed on the keypad is written into it; then the owner
  finds the lab's Wi-Fi network (two mac80211_hwsim radios: one is the phone's, the other an
  access point run here), types its key and the phone gets an address on it;
- boot 2: before the PIN the phone's wpa_supplicant knows no network; a wrong PIN does not
  unlock (nothing mounted); the right one does, the setting is back and the phone joins the
  Wi-Fi by itself; then a duress PIN is set and entered: the phone is factory fresh, the LUKS2
  keyslots are gone and wpa_supplicant knows no network again.

Every boot it also looks at the network: an address by DHCP, a default route, DNS through
resolved's stub, the clock service, nothing listening beyond loopback and the DHCP clients, and
the lab's servers (``byline.lab=xmpp:HOST:PORT,sip:HOST:PORT``) reachable by the phone's venv.

Writes one JSON line to the virtio-serial port /dev/virtio-ports/org.byline.selftest and powers
off. Standard library only: it runs on the system python3, not the phone's venv.
"""

import glob
import json
import os
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, "/opt/byline")
from firmware.text_entry import keys_for  # noqa: E402  (standard library only, like this script)

PORT = "/dev/virtio-ports/org.byline.selftest"
FRAMES = "/run/byline/frames"
KEYS = "/run/byline/keys"
SCREEN = "/run/byline/screen.txt"
MOUNT = "/var/lib/byline/data"
MAPPER = "/dev/mapper/byline-data"
PINS = {"PIN": ("246801", "000000", "975310"),
        "passphrase": ("2468013579246801", "0000000000000000", "9753102468097531")}
"""(secret, a wrong one, the duress one) by what the phone asks for: a PIN with a TPM, a 16-digit
passphrase without one."""
WAIT_S = 300
UNLOCK_WAIT_S = 240
"""Choosing or entering a PIN under emulation: Argon2id, the TPM, LUKS2, mkfs."""
DHCP_WAIT_S = 90
STUB_RESOLV_CONF = "/run/systemd/resolve/stub-resolv.conf"
DHCP_CLIENT_PORTS = {("udp", 68), ("udp", 546)}
"""What may listen beyond loopback on a locked phone: networkd's DHCPv4 and DHCPv6 clients."""
started = time.monotonic()


def sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True).stdout.strip()


def wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def show(unit: str, *props: str) -> dict:
    out = sh("systemctl", "show", unit, *(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def press(*keys: str) -> None:
    """Press keys on the phone, one line each on its key socket; each is answered once posted."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(KEYS)
        reader = connection.makefile("rb")
        for key in keys:
            connection.sendall(key.encode() + b"\n")
            if reader.readline().strip() != b"ok":
                raise RuntimeError(f"the phone refused the key {key!r}")
            time.sleep(0.05)


def screen() -> list[str]:
    try:
        with open(SCREEN) as file:
            return file.read().splitlines()
    except OSError:
        return []


def shows(text: str, timeout: float = 60) -> bool:
    return wait(lambda: any(text in line for line in screen()), timeout)


def mounted() -> bool:
    return sh("findmnt", "-n", "-o", "SOURCE", MOUNT) == MAPPER


def data_partition() -> str:
    root = os.path.basename(os.path.realpath(sh("findmnt", "-n", "-o", "SOURCE", "/")))
    disk = os.path.dirname(os.path.realpath(f"/sys/class/block/{root}"))
    for child in sorted(os.listdir(disk)):
        number = os.path.join(disk, child, "partition")
        if os.path.exists(number) and open(number).read().strip() == "3":
            return f"/dev/{child}"
    return ""


def luks_dump() -> str:
    return sh("cryptsetup", "luksDump", data_partition())


def keyslots(dump: str) -> list[str]:
    """The keyslot lines of a LUKS2 dump ("  0: luks2")."""
    section = dump.split("Keyslots:", 1)[1].split("Tokens:", 1)[0] if "Keyslots:" in dump else ""
    return [line.strip() for line in section.splitlines() if line.startswith("  ") and ": " in line and
            not line.startswith("\t")]


def secrets_asked(title: str) -> tuple[str, str, str]:
    word = "passphrase" if any(title + " passphrase" in line for line in screen()) else "PIN"
    return PINS[word]


WIFI_NAME = "Byline Lab"
WIFI_KEY = "24681357"
WIFI_PHONE, WIFI_ACCESS_POINT = "wlan0", "wlan1"
WIFI_SUBNET = "192.168.77."
WIFI_WAIT_S = 120
WIFI_SCANS = 3
ACCESS_POINT_NETWORK = f"""[Match]
Name={WIFI_ACCESS_POINT}

[Network]
Address={WIFI_SUBNET}1/24
DHCPServer=yes
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPServer]
PoolOffset=100
PoolSize=50
EmitDNS=no
"""
ACCESS_POINT_CONFIG = f"""ctrl_interface=/run/byline-lab-ap
network={{
    ssid="{WIFI_NAME}"
    mode=2
    frequency=2412
    key_mgmt=WPA-PSK
    proto=RSN
    pairwise=CCMP
    group=CCMP
    psk="{WIFI_KEY}"
}}
"""


def start_access_point(info: dict) -> bool:
    """Two simulated radios: the phone's (its wpa_supplicant started by udev) and the lab's access
    point on the other, with a DHCP server (networkd) and WPA2 (a wpa_supplicant in AP mode)."""
    # the phone's wpa_supplicant logs its debug lines to a file, for the report when Wi-Fi fails
    os.makedirs("/run/systemd/system/byline-wifi@.service.d", exist_ok=True)
    with open("/run/systemd/system/byline-wifi@.service.d/selftest-debug.conf", "w") as file:
        file.write("[Service]\nExecStart=\nExecStart=/sbin/wpa_supplicant -D nl80211 -c /etc/wpa_supplicant/byline.conf "
                   "-i %I -dd -t -f /run/wpa_supplicant/debug-%I.log\n")
    # the access point's radio is not the phone's: udev must not start the phone's wpa_supplicant on it
    sh("systemctl", "mask", "--runtime", f"byline-wifi@{WIFI_ACCESS_POINT}.service")
    sh("systemctl", "daemon-reload")
    subprocess.run(["modprobe", "mac80211_hwsim", "radios=2"], capture_output=True)
    if not wait(lambda: all(os.path.exists(f"/sys/class/net/{i}") for i in (WIFI_PHONE, WIFI_ACCESS_POINT)), 30):
        info["wifi_error"] = "no hwsim radios"
        return False
    os.makedirs("/run/systemd/network", exist_ok=True)
    with open("/run/systemd/network/10-byline-lab-ap.network", "w") as file:
        file.write(ACCESS_POINT_NETWORK)
    sh("networkctl", "reload")
    with open("/run/byline-lab-ap.conf", "w") as file:
        file.write(ACCESS_POINT_CONFIG)
    started = subprocess.run(["wpa_supplicant", "-B", "-D", "nl80211", "-i", WIFI_ACCESS_POINT,
                              "-c", "/run/byline-lab-ap.conf", "-f", "/run/byline-lab-ap.log"], capture_output=True)
    phone_ready = wait(lambda: os.path.exists(f"/run/wpa_supplicant/{WIFI_PHONE}"), 30)
    info["wifi_phone_unit"] = sh("systemctl", "is-active", f"byline-wifi@{WIFI_PHONE}.service")
    return started.returncode == 0 and phone_ready


def phone_networks() -> list[str] | None:
    """The networks the phone's wpa_supplicant knows (wpa_cli list_networks, header left out);
    None when it did not answer."""
    out = sh("wpa_cli", "-p", "/run/wpa_supplicant", "-i", WIFI_PHONE, "list_networks").splitlines()
    if not out or not out[0].startswith("network id"):
        return None
    return [line for line in out[1:] if line.strip()]


def wifi_address() -> str:
    for link in ip_json("-4", "addr", "show", "dev", WIFI_PHONE):
        for address in link.get("addr_info", []):
            if address.get("local", "").startswith(WIFI_SUBNET):
                return address["local"]
    return ""


def press_down_to(text: str, timeout: float = 60) -> bool:
    """On a section or list screen: move the selection to the line showing ``text`` (from the top)."""
    if not shows(text, timeout):
        return False
    items = screen()[1:]
    index = next(i for i, line in enumerate(items) if text in line)
    press(*["up"] * len(items), *["down"] * index)
    return True


def join_wifi(checks: dict, info: dict, pin: str) -> None:
    """The owner, in Settings: Network, Find Wi-Fi, the lab's network, its key."""
    if shows("Locked", 0):  # idle long enough under emulation for the screen lock
        press(*pin, "ok")
        shows("No account", UNLOCK_WAIT_S)
    press("back", "back", "ok", "5")  # home, menu, Settings
    found = press_down_to("Network")
    if found:
        press("ok")
        shows(f"{WIFI_PHONE} ", 30)  # the list is whole once the phone's radio is in it: then move
        found = press_down_to("Find Wi-Fi")
    for _ in range(WIFI_SCANS):  # a scan can miss a beacon: "Find again", as an owner would
        if not found:
            break
        press("ok")
        shows("Searching...", 10)
        wait(lambda: any(WIFI_NAME in line or "Find again" in line for line in screen()), WIFI_WAIT_S)
        if press_down_to(WIFI_NAME, 0):
            break
        found = press_down_to("Find again", 0)
    checks["wifi_found"] = any(WIFI_NAME in line for line in screen())
    info["wifi_list"] = screen()
    info["wifi_diagnosis"] = {
        "phone_scan": sh("wpa_cli", "-p", "/run/wpa_supplicant", "-i", WIFI_PHONE, "scan_results").splitlines(),
        "access_point": sh("wpa_cli", "-p", "/run/byline-lab-ap", "-i", WIFI_ACCESS_POINT, "status").splitlines(),
        "access_point_log": sh("tail", "-n", "15", "/run/byline-lab-ap.log").splitlines(),
        "phone_wpa_scan_lines": [line for line in sh("cat", f"/run/wpa_supplicant/debug-{WIFI_PHONE}.log").splitlines()
                                 if "scan" in line.lower() or "SCAN" in line][-40:],
        "phone_network_unit": [line for line in sh("journalctl", "-b", "--no-pager", "-o", "cat", "-u",
                                                   "byline.service").splitlines() if "network" in line][-15:],
    }
    if not checks["wifi_found"]:  # does wpa_supplicant itself see the access point?
        sh("wpa_cli", "-p", "/run/wpa_supplicant", "-i", WIFI_PHONE, "scan")
        time.sleep(15)
        info["wifi_diagnosis"]["manual_scan"] = sh("wpa_cli", "-p", "/run/wpa_supplicant", "-i", WIFI_PHONE,
                                                   "scan_results").splitlines()
    if not checks["wifi_found"]:
        return
    press("ok")
    checks["wifi_asks_its_key"] = shows(f"Key {WIFI_NAME}", 30)
    press(*keys_for(WIFI_KEY), "ok")
    checks["wifi_given_to_wpa_supplicant"] = wait(lambda: any(WIFI_NAME in line for line in phone_networks() or ()), 60)
    checks["wifi_joined"] = wait(lambda: bool(wifi_address()), WIFI_WAIT_S)
    info["wifi_address"] = wifi_address()
    # back in Settings, its selection still on Network; "*" wakes a blanked screen and is nothing on a section
    press("*", "ok")
    checks["wifi_shown"] = shows(f"{WIFI_PHONE} {WIFI_NAME}", 30)
    info["network_list"] = screen()
    # the key typed is kept nowhere: not in the logs, not in the (decrypted) data volume's files
    journal = sh("journalctl", "-b", "--no-pager", "-o", "cat")
    in_volume = subprocess.run(["grep", "-rlF", WIFI_KEY, MOUNT], capture_output=True, text=True).stdout
    checks["wifi_key_not_kept"] = WIFI_KEY not in journal and not in_volume


def first_boot(checks: dict, info: dict) -> None:
    checks["first_boot_asks_for_a_pin"] = shows("Choose ", WAIT_S)
    info["asked"] = screen()[:1]
    pin, _, _ = secrets_asked("Choose")
    checks["no_volume_before_the_pin"] = not mounted() and "byline-header" not in luks_dump()
    press(*pin, "ok", *pin, "ok")
    checks["pin_chosen"] = shows("No account", UNLOCK_WAIT_S)
    dump = luks_dump()
    info["luks_keyslots"] = keyslots(dump)
    checks["data_is_luks2"] = "Version:       \t2" in dump and len(keyslots(dump)) == 1 and "byline-header" in dump
    checks["data_mounted"] = mounted()
    press("ok", "5")  # Menu, 5 Settings
    shows("Clock: 24h")
    press("down", "ok")  # Clock: 24h -> 12h, saved in the store
    checks["setting_changed"] = shows("Clock: 12h")
    records = os.path.join(MOUNT, "records")
    checks["state_in_the_volume"] = wait(lambda: os.path.isdir(records) and len(os.listdir(records)) > 0, 30)
    info["records"] = len(os.listdir(records)) if os.path.isdir(records) else 0
    checks["wifi_access_point"] = start_access_point(info)
    join_wifi(checks, info, pin)


def second_boot(checks: dict, info: dict) -> None:
    checks["asks_for_the_pin"] = shows("Enter ", WAIT_S)
    pin, wrong_pin, duress_pin = secrets_asked("Enter")
    checks["wifi_access_point"] = start_access_point(info)
    time.sleep(5)  # time enough for a phone that (wrongly) knew the network to join it
    checks["wifi_nothing_before_the_pin"] = phone_networks() == [] and not wifi_address()
    press(*wrong_pin, "ok")
    checks["wrong_pin_refused"] = shows("Wrong: ", UNLOCK_WAIT_S) and shows("Enter ", 5)
    checks["wrong_pin_mounts_nothing"] = not mounted()
    press(*pin, "ok")
    checks["right_pin_unlocks"] = shows("No account", UNLOCK_WAIT_S) and mounted()
    press("ok", "5")
    checks["state_is_back"] = shows("Clock: 12h", 30)
    info["screen_after_unlock"] = screen()
    checks["wifi_rejoined_after_unlock"] = wait(lambda: bool(wifi_address()), WIFI_WAIT_S)
    info["wifi_address"] = wifi_address()
    # A duress PIN wipes at once: the LUKS2 keyslots go first.
    press("back", "back", "ok", "6", "down", "down", "down", "ok", *pin, "ok", *duress_pin, "ok", *duress_pin, "ok")
    checks["duress_pin_set"] = shows(": on", UNLOCK_WAIT_S)  # "Duress PIN: on"
    press("down", "ok")  # Lock now
    shows("Locked", 30)
    press(*duress_pin, "ok")
    checks["duress_wipes_to_a_new_phone"] = shows("Choose ", UNLOCK_WAIT_S)
    dump = luks_dump()
    info["luks_keyslots_after_wipe"] = keyslots(dump)
    checks["keyslots_gone_after_wipe"] = keyslots(dump) == [] and "byline-header" not in dump
    checks["nothing_mounted_after_wipe"] = not mounted()
    checks["wifi_forgotten_after_wipe"] = wait(lambda: phone_networks() == [], 30)


def ip_json(*args: str) -> list:
    try:
        return json.loads(sh("ip", "-j", *args) or "[]")
    except ValueError:
        return []


def is_loopback(address: str) -> bool:
    address = address.split("%", 1)[0].strip("[]")
    return address.startswith("127.") or address == "::1"


def listeners() -> list[tuple[str, str, int]]:
    """(protocol, local address, port) of every listening TCP and bound UDP socket."""
    found = []
    for line in sh("ss", "-H", "-l", "-n", "-t", "-u").splitlines():
        fields = line.split()
        if len(fields) >= 5:
            address, _, port = fields[4].rpartition(":")
            found.append((fields[0], address, int(port) if port.isdigit() else -1))
    return found


def network(checks: dict, info: dict) -> dict[str, str]:
    """Check the network as a locked phone has it; return the lab's servers to reach by kind."""
    def global_addresses() -> list[str]:
        return [f"{link['ifname']} {a['local']}/{a['prefixlen']}" for link in ip_json("-4", "addr", "show", "scope", "global")
                for a in link.get("addr_info", []) if a.get("dynamic")]

    checks["network_address"] = wait(lambda: bool(global_addresses()), DHCP_WAIT_S)
    routes = ip_json("route", "show", "default")
    resolv = os.path.realpath("/etc/resolv.conf")
    stub = open(resolv).read() if os.path.exists(resolv) else ""
    open_sockets = [entry for entry in listeners() if not is_loopback(entry[1])]
    info["network"] = {"addresses": global_addresses(), "default_routes": [r.get("gateway") for r in routes],
                       "resolv_conf": resolv, "dns": sh("resolvectl", "dns").splitlines(),
                       "listening": [f"{proto} {address}:{port}" for proto, address, port in open_sockets]}
    checks["network_default_route"] = bool(routes)
    checks["network_dns_stub"] = resolv == STUB_RESOLV_CONF and "nameserver 127.0.0.53" in stub and \
        any(":" in line and line.split(":", 1)[1].strip() for line in info["network"]["dns"])
    checks["network_time_sync"] = sh("systemctl", "is-active", "systemd-timesyncd.service") == "active"
    checks["network_no_dbus_wpa_supplicant"] = sh("systemctl", "is-enabled", "wpa_supplicant.service") == "masked" \
        and sh("systemctl", "is-active", "wpa_supplicant.service") != "active"
    complaints = [line for line in sh("journalctl", "-b", "--no-pager", "-o", "cat", "-u", "systemd-networkd.service",
                                      "-u", "systemd-resolved.service", "-u", "systemd-timesyncd.service").splitlines()
                  if "Unknown key" in line or "Unknown section" in line or "Failed to parse" in line]
    info["network"]["config_complaints"] = complaints
    checks["network_config_clean"] = not complaints
    checks["network_nothing_listens"] = all((proto, port) in DHCP_CLIENT_PORTS for proto, _, port in open_sockets)
    lab = next((word.split("=", 1)[1] for word in open("/proc/cmdline").read().split()
                if word.startswith("byline.lab=")), "")
    return dict(entry.split(":", 1) for entry in lab.split(",") if ":" in entry)


def png_size(path: str) -> tuple[int, int] | None:
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def main() -> None:
    result: dict = {"checks": {}, "info": {}}
    checks, info = result["checks"], result["info"]

    checks["byline_active"] = wait(lambda: sh("systemctl", "is-active", "byline.service") == "active", WAIT_S)
    frames: list[str] = []

    def have_frame() -> bool:
        frames[:] = sorted(glob.glob(os.path.join(FRAMES, "frame_*.png")))
        return bool(frames)

    checks["frame_captured"] = wait(have_frame, WAIT_S)
    info["first_frame_s"] = round(time.monotonic() - started, 1)
    info["uptime_s"] = float(open("/proc/uptime").read().split()[0])
    if frames:
        time.sleep(2)  # let the PIN screen settle, then look at the newest frame
        have_frame()
        size = png_size(frames[-1])
        info["frames"] = len(frames)
        info["frame_size"] = size
        checks["frame_128x64"] = size == (128, 64)
    else:
        checks["frame_128x64"] = False

    # root: erofs, read-only, and a write fails
    info["root"] = sh("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "/")
    checks["root_erofs_ro"] = sh("findmnt", "-n", "-o", "FSTYPE", "/") == "erofs" and \
        "ro" in sh("findmnt", "-n", "-o", "OPTIONS", "/").split(",")
    try:
        with open("/byline-write-test", "w") as f:
            f.write("x")
        checks["root_write_fails"] = False
    except OSError as e:
        checks["root_write_fails"] = True
        info["root_write_error"] = e.strerror
    info["cmdline"] = open("/proc/cmdline").read().strip()

    # volatile directories on tmpfs
    tmpfs = {d: sh("findmnt", "-n", "-o", "FSTYPE", d) for d in ("/tmp", "/var/tmp", "/var/log", "/var/lib/byline", "/run")}
    info["volatile"] = tmpfs
    checks["volatile_tmpfs"] = all(fs == "tmpfs" for fs in tmpfs.values())

    # no SSH server, no swap
    ssh_units = sh("systemctl", "list-unit-files", "--no-legend", "ssh*", "sshd*", "dropbear*")
    checks["no_sshd"] = not any(os.path.exists(p) for p in ("/usr/sbin/sshd", "/usr/sbin/dropbear")) and not ssh_units
    checks["no_swap"] = sh("swapon", "--show", "--noheadings") == "" and \
        len(open("/proc/swaps").read().strip().splitlines()) == 1

    # journald: in memory only
    journald = sh("systemd-analyze", "cat-config", "systemd/journald.conf")
    storage = [line for line in journald.splitlines() if line.strip().startswith("Storage=")]
    info["journald_storage"] = storage[-1] if storage else None
    checks["journal_volatile"] = bool(storage) and storage[-1].strip() == "Storage=volatile" and \
        not os.path.isdir("/var/log/journal") and os.path.isdir("/run/log/journal")

    # the phone's unit: its own user, hardened
    props = show("byline.service", "User", "MainPID", "NoNewPrivileges", "ProtectSystem", "DevicePolicy",
                 "CapabilityBoundingSet", "ActiveState", "NRestarts")
    info["byline_unit"] = props
    uid = None
    pid = props.get("MainPID", "0")
    if pid != "0" and os.path.exists(f"/proc/{pid}/status"):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
    info["byline_uid"] = uid
    checks["byline_not_root"] = props.get("User") == "byline" and uid not in (None, 0)
    checks["byline_no_new_privileges"] = props.get("NoNewPrivileges") == "yes"
    checks["byline_protect_system_strict"] = props.get("ProtectSystem") == "strict"

    # the TPM (swtpm on the host) and its owner
    checks["tpm_device"] = os.path.exists("/dev/tpmrm0")
    if checks["tpm_device"]:
        st = os.stat("/dev/tpmrm0")
        info["tpmrm0"] = {"uid": st.st_uid, "gid": st.st_gid, "mode": oct(st.st_mode & 0o777)}

    # the store reached the TPM from inside byline.service's sandbox (user byline, group tss)
    journal = sh("journalctl", "-u", "byline.service", "--no-pager", "-o", "cat")
    checks["store_uses_tpm"] = "protection: PIN + TPM 2.0" in journal

    lab_servers = network(checks, info)

    # the firmware's own self-test: the display driver, an ALSA round trip through snd-aloop, the
    # TPM, and the lab's servers through the network
    subprocess.run(["modprobe", "snd-aloop"], capture_output=True)
    firmware = subprocess.run(
        ["/opt/byline/venv/bin/python", "-m", "firmware.selftest", "--tpm", "auto",
         "--audio", "plughw:CARD=Loopback,DEV=1", "plughw:CARD=Loopback,DEV=0",
         *(f"--reach={target}" for target in lab_servers.values())],
        capture_output=True, text=True, cwd="/opt/byline", env={"PYTHONPATH": "/opt/byline", "PATH": "/usr/bin:/bin"})
    try:
        firmware_report = json.loads(firmware.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        firmware_report = {"ok": False, "error": firmware.stderr[-500:]}
    info["firmware_selftest"] = firmware_report
    firmware_checks = firmware_report.get("checks", {"run": False})
    for name, ok in firmware_checks.items():
        if name.startswith("reach "):
            continue
        if name != "tpm" or os.path.exists("/dev/tpmrm0"):  # no TPM on arm64 virt: reported as tpm_device
            checks[f"firmware_{name}"] = ok
    for kind in ("xmpp", "sip"):
        checks[f"lab_{kind}_reachable"] = kind in lab_servers and firmware_checks.get(f"reach {lab_servers[kind]}") is True

    boot = next((word.split("=", 1)[1] for word in open("/proc/cmdline").read().split()
                 if word.startswith("byline.boot=")), "")
    info["boot"] = boot
    try:
        if boot == "1":
            first_boot(checks, info)
        elif boot == "2":
            second_boot(checks, info)
    except Exception as e:  # noqa: BLE001 - reported to the host as a failed check
        checks[f"boot{boot}_flow"] = False
        info["error"] = f"{type(e).__name__}: {e}"
    info["screen"] = screen()
    info["byline_volume_log"] = sh("journalctl", "-u", "byline-volume.service", "-n", "15", "--no-pager",
                                   "-o", "cat").splitlines()
    info["byline_log_tail"] = sh("journalctl", "-u", "byline.service", "-n", "15", "--no-pager", "-o", "cat").splitlines()
    info["failed_units"] = sh("systemctl", "list-units", "--failed", "--no-legend", "--plain").splitlines()
    result["ok"] = all(checks.values())
    result["selftest_s"] = round(time.monotonic() - started, 1)

    line = json.dumps(result, sort_keys=True) + "\n"
    print(line, end="", flush=True)
    try:
        with open(PORT, "w") as port:
            port.write(line)
            port.flush()
    finally:
        subprocess.run(["systemctl", "poweroff", "--no-block"])


if __name__ == "__main__":
    main()
