"""firmware.chat.otr: OTR v3 through libotr 4.1, two (or three) accounts in one process wired by
an in-memory network."""

import base64
import logging
import subprocess
import time
from collections import deque

import pytest

from firmware.chat import otr
from firmware.chat.otr import (
    Encrypted,
    Ended,
    FingerprintChanged,
    NewFingerprint,
    OtrAccount,
    OtrError,
    SmpQuestion,
    SmpRequest,
    SmpResult,
    Unencrypted,
)

ALICE = "alice@example.org/desk"
BOB = "bob@example.org/phone"
BOB2 = "bob@example.org/laptop"


class Net:
    """Messages go into one queue; ``pump`` delivers them. A bare-JID destination reaches every
    resource of that JID (as an XMPP server with carbons would), a full JID only that one."""

    def __init__(self):
        self.queue = deque()
        self.accounts: dict[str, OtrAccount] = {}
        self.events: dict[str, list] = {}
        self.wire: list[tuple[str, str, str]] = []

    def add(self, jid, key=None, instance_tag=None, fingerprints=None, **kw):
        self.events[jid] = []
        account = OtrAccount(jid.split("/")[0], private_key=key, instance_tag=instance_tag,
                             fingerprints=fingerprints,
                             send=lambda to, text, j=jid: self.queue.append((j, to, text)),
                             on_event=self.events[jid].append, **kw)
        self.accounts[jid] = account
        return account

    def post(self, sender, to, text):
        self.queue.append((sender, to, text))

    def pump(self, limit=200):
        shown = []
        while self.queue:
            limit -= 1
            assert limit > 0, "message storm"
            sender, to, text = self.queue.popleft()
            self.wire.append((sender, to, text))
            for jid, account in list(self.accounts.items()):
                if jid == to or jid.split("/")[0] == to:
                    result = account.receiving(sender, text)
                    if result is not None:
                        shown.append((jid, result))
        return shown

    def of(self, jid, kind):
        return [e for e in self.events[jid] if isinstance(e, kind)]


@pytest.fixture(scope="module")
def keys():
    """One private key per name, made once (libotr writes the key for the account name)."""
    made = {}
    for name in ("alice@example.org", "bob@example.org", "bob@example.org#2"):
        account = OtrAccount(name.split("#")[0], private_key=None, instance_tag=None,
                             fingerprints=None, send=lambda *a: None, on_event=lambda e: None)
        account.generate_key()
        made[name] = account.export_state()[0]
        account.close()
    return made


@pytest.fixture
def net(keys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = Net()
    n.add(ALICE, keys["alice@example.org"])
    n.add(BOB, keys["bob@example.org"])
    yield n
    assert list(tmp_path.iterdir()) == [], "OTR wrote a file"


def connect(n, a=ALICE, b=BOB):
    n.post(a, b.split("/")[0], n.accounts[a].sending(b, "hello"))
    return n.pump()


def test_key_generation_timing_and_fingerprint():
    account = OtrAccount("carol@example.org", private_key=None, instance_tag=None,
                         fingerprints=None, send=lambda *a: None, on_event=lambda e: None)
    assert account.fingerprint() is None and not account.has_key
    started = time.perf_counter()
    fingerprint = account.generate_key()
    elapsed = time.perf_counter() - started
    assert elapsed < 30
    groups = fingerprint.split(" ")
    assert len(groups) == 5 and all(len(g) == 8 and int(g, 16) >= 0 for g in groups)
    assert account.fingerprint() == fingerprint and account.has_key
    key, tag, _ = account.export_state()
    assert b"(private-key" in key and b"(dsa" in key
    assert tag >= otr.MIN_VALID_INSTAG
    account.close()
    assert "absent" in repr(account) and account.state("x@example.org") == "plaintext"
    assert account.receiving("x@example.org/r", "hi") is None


def test_ake_reaches_encrypted_v3_with_instance_tags(net):
    alice, bob = net.accounts[ALICE], net.accounts[BOB]
    assert alice.instance_tag >= 0x100 and bob.instance_tag >= 0x100
    query = alice.sending("bob@example.org", "hello")
    assert query.startswith("?OTRv3?")  # v3 only: not "?OTRv23?"
    net.post(ALICE, "bob@example.org", query)
    shown = net.pump()
    # AKE messages are OTR version 3 (header 0x0003: base64 "AAM"), with instance tags
    ake = [t for _, _, t in net.wire if t.startswith("?OTR:")]
    assert ake and all(t.startswith("?OTR:AAM") for t in ake)
    commit = base64.b64decode(ake[0][5:].rstrip("."))
    assert commit[:3] == b"\x00\x03\x02"  # v3 DH-Commit
    assert int.from_bytes(commit[3:7], "big") == bob.instance_tag
    assert alice.state("bob@example.org") == bob.state("alice@example.org") == "encrypted"
    assert alice.instances("bob@example.org") == [bob.instance_tag]
    assert bob.instances("alice@example.org") == [alice.instance_tag]
    assert net.of(ALICE, Encrypted) == [Encrypted("bob@example.org", False, bob.instance_tag)]
    assert net.of(BOB, Encrypted) == [Encrypted("alice@example.org", False, alice.instance_tag)]
    assert net.of(ALICE, NewFingerprint) == [NewFingerprint("bob@example.org", bob.fingerprint())]
    assert alice.peer_fingerprint("bob@example.org") == bob.fingerprint()
    assert bob.peer_fingerprint("alice@example.org") == alice.fingerprint()
    # the message kept while the AKE ran was sent once private
    assert shown == [(BOB, "hello")]
    assert not alice.trusted("bob@example.org")
    # injected messages went to the resource heard from
    assert ("desk" in net.wire[-1][1]) or ("phone" in net.wire[-1][1])


def test_messages_both_ways(net):
    connect(net)
    alice, bob = net.accounts[ALICE], net.accounts[BOB]
    for sender, account, to, text in ((ALICE, alice, BOB, "héllo bob ✓"),
                                      (BOB, bob, ALICE, "hi alice"),
                                      (ALICE, alice, BOB, "<b>tags</b> & more")):
        wire = account.sending(to, text)
        assert wire.startswith("?OTR:AAMD") and text not in wire
        net.post(sender, to, wire)
        assert net.pump() == [(to, text)]
    assert not [e for j in net.events for e in net.of(j, OtrError)]


def test_required_encryption_never_sends_plaintext(net):
    alice = net.accounts[ALICE]
    out = alice.sending("bob@example.org", "secret plan")
    assert "secret plan" not in out and out.startswith("?OTRv3?")
    # a plaintext message received while encryption is required is flagged, not shown
    assert net.accounts[BOB].receiving(ALICE, "just plain") is None
    assert net.of(BOB, Unencrypted) == [Unencrypted("alice@example.org", "just plain")]


def test_allow_plaintext(keys):
    n = Net()
    a = n.add(ALICE, keys["alice@example.org"], allow_plaintext=True)
    n.add(BOB, keys["bob@example.org"], allow_plaintext=True)
    wire = a.sending(BOB, "plain hi")
    assert wire.startswith("plain hi \t  \t\t\t\t \t \t \t  "), "plain, with OTR's whitespace tag"
    n.post(ALICE, BOB, wire)
    assert n.pump() == [(BOB, "plain hi")], "the tag is taken off, and it starts the key exchange"
    assert a.state("bob@example.org") == "encrypted"


def smp(net, question, secret_a, secret_b):
    alice, bob = net.accounts[ALICE], net.accounts[BOB]
    assert alice.smp_start("bob@example.org", secret_a, question)
    net.pump()
    asked = net.of(BOB, SmpQuestion) if question else net.of(BOB, SmpRequest)
    assert asked and asked[-1].peer == "alice@example.org"
    if question:
        assert asked[-1].question == question
    assert bob.smp_respond("alice@example.org", secret_b)
    net.pump()
    return net.of(ALICE, SmpResult)[-1], net.of(BOB, SmpResult)[-1]


@pytest.mark.parametrize("question", ["Where did we meet?", None])
def test_smp_right_answer(net, question):
    connect(net)
    ra, rb = smp(net, question, "at the lake", "at the lake")
    assert ra.success and rb.success
    assert net.accounts[ALICE].trusted("bob@example.org")
    assert net.accounts[BOB].trusted("alice@example.org")


@pytest.mark.parametrize("question", ["Where did we meet?", None])
def test_smp_wrong_answer(net, question):
    connect(net)
    ra, rb = smp(net, question, "at the lake", "in the city")
    assert not ra.success and not rb.success
    assert not net.accounts[ALICE].trusted("bob@example.org")
    assert not net.accounts[BOB].trusted("alice@example.org")


def test_smp_abort_and_respond_without_request(net):
    connect(net)
    bob = net.accounts[BOB]
    assert not bob.smp_respond("alice@example.org", "x")  # nothing asked: refused, no crash
    assert net.of(BOB, OtrError)
    net.accounts[ALICE].smp_start("bob@example.org", "s", "q?")
    net.pump()
    bob.smp_abort("alice@example.org")
    net.pump()
    assert net.of(ALICE, SmpResult) == [SmpResult("bob@example.org", False, bob.instance_tag)]
    assert not net.accounts[ALICE].trusted("bob@example.org")
    # SMP outside a private conversation is refused
    assert not net.accounts[ALICE].smp_start("nobody@example.org", "s", None)


def test_manual_fingerprint_verification(net):
    connect(net)
    alice, bob = net.accounts[ALICE], net.accounts[BOB]
    fp = alice.peer_fingerprint("bob@example.org")
    assert fp == bob.fingerprint()
    assert not alice.set_trust("bob@example.org", "00000000 " * 4 + "00000000", True)
    assert not alice.set_trust("bob@example.org", "nonsense", True)
    assert alice.set_trust("bob@example.org", fp.lower().replace(" ", ""), True)
    assert alice.trusted("bob@example.org")
    assert alice.known_fingerprints("bob@example.org") == {fp: True}
    # the next private conversation starts verified
    alice.end("bob@example.org")
    net.pump()
    connect(net)
    assert net.of(ALICE, Encrypted)[-1].verified
    assert alice.set_trust("bob@example.org", fp, False)
    assert not alice.trusted("bob@example.org")


def test_key_change_is_reported_and_unverified(net, keys):
    connect(net)
    alice = net.accounts[ALICE]
    old = alice.peer_fingerprint("bob@example.org")
    alice.set_trust("bob@example.org", old, True)
    assert alice.trusted("bob@example.org")
    # bob comes back with another key
    net.accounts[BOB].close()
    del net.accounts[BOB]
    bob = net.add(BOB, keys["bob@example.org#2"])
    assert bob.fingerprint() != old
    connect(net, BOB, ALICE)
    assert alice.state("bob@example.org") == "encrypted"
    changed = net.of(ALICE, FingerprintChanged)
    assert changed and changed[-1].old == old and changed[-1].new == bob.fingerprint()
    assert "not verified" in changed[-1].message
    assert not alice.trusted("bob@example.org")
    assert not net.of(ALICE, Encrypted)[-1].verified
    assert alice.known_fingerprints("bob@example.org") == {old: True, bob.fingerprint(): False}


def test_two_instances_of_the_same_peer(net, keys):
    bob1 = net.accounts[BOB]
    bob2 = net.add(BOB2, keys["bob@example.org"])  # same key, another instance (device)
    assert bob1.instance_tag != bob2.instance_tag
    alice = net.accounts[ALICE]
    alice.start("bob@example.org")  # to the bare JID: both resources answer
    net.pump()
    assert sorted(alice.instances("bob@example.org")) == sorted([bob1.instance_tag,
                                                                  bob2.instance_tag])
    for tag in (bob1.instance_tag, bob2.instance_tag):
        assert alice.state("bob@example.org", tag) == "encrypted"
    assert bob1.state("alice@example.org") == bob2.state("alice@example.org") == "encrypted"
    # alice -> a given instance: only that one reads it (the other discards it)
    for tag, jid in ((bob1.instance_tag, BOB), (bob2.instance_tag, BOB2)):
        wire = alice.sending("bob@example.org", f"for {jid}", instance=tag)
        assert alice.route("bob@example.org", tag) == jid
        net.post(ALICE, "bob@example.org", wire)  # even sent to all resources
        assert net.pump() == [(jid, f"for {jid}")]
    # each bob instance -> alice
    for account, jid in ((bob1, BOB), (bob2, BOB2)):
        net.post(jid, "alice@example.org", account.sending("alice@example.org", f"from {jid}"))
        assert net.pump() == [(ALICE, f"from {jid}")]
    # ending one instance leaves the other
    alice.end("bob@example.org", bob1.instance_tag)
    net.pump()
    assert alice.state("bob@example.org", bob1.instance_tag) == "plaintext"
    assert alice.state("bob@example.org", bob2.instance_tag) == "encrypted"
    assert bob1.state("alice@example.org") == "finished"
    assert bob2.state("alice@example.org") == "encrypted"
    assert Ended("bob@example.org", bob1.instance_tag) in net.events[ALICE]


def test_end_reaches_finished(net):
    connect(net)
    alice, bob = net.accounts[ALICE], net.accounts[BOB]
    alice.end("bob@example.org")
    net.pump()
    assert alice.state("bob@example.org") == "plaintext"
    assert bob.state("alice@example.org") == "finished"
    assert net.of(ALICE, Ended) and net.of(BOB, Ended)
    assert bob.sending("alice@example.org", "still there?") is None
    assert net.of(BOB, OtrError)


def test_export_state_round_trip(net):
    connect(net)
    alice = net.accounts[ALICE]
    fp = alice.peer_fingerprint("bob@example.org")
    alice.set_trust("bob@example.org", fp, True)
    key, tag, fingerprints = alice.export_state()
    assert b"bob@example.org" in fingerprints and b"verified" in fingerprints
    own = alice.fingerprint()
    alice.close()
    del net.accounts[ALICE]
    again = net.add(ALICE, key, tag, fingerprints)
    assert again.fingerprint() == own and again.instance_tag == tag
    assert again.known_fingerprints("bob@example.org") == {fp: True}
    assert again.export_state() == (key, tag, fingerprints)
    net.accounts[BOB].end("alice@example.org")
    net.pump()
    connect(net)
    assert again.trusted("bob@example.org")
    assert net.of(ALICE, Encrypted)[-1].verified


def test_bad_state_is_refused(keys):
    kw = {"instance_tag": None, "fingerprints": None, "send": lambda *a: None,
          "on_event": lambda e: None}
    with pytest.raises(otr.OtrFailure):
        OtrAccount("alice@example.org", private_key=b"(privkeys garbage", **kw)
    with pytest.raises(otr.OtrFailure):  # a key made for another account
        OtrAccount("carol@example.org", private_key=keys["alice@example.org"], **kw)
    with pytest.raises(ValueError):
        OtrAccount("alice@example.org", private_key=None, fingerprints=None, instance_tag=5,
                   send=lambda *a: None, on_event=lambda e: None)
    with pytest.raises(ValueError):
        OtrAccount("a\tb", private_key=None, **kw)


@pytest.mark.parametrize("text", [
    "?OTR:garbage.",
    "?OTR:AAMD!!!notbase64!!!.",
    "?OTR:AAMDAAAAAAAAAAAA.",
    "?OTR:" + base64.b64encode(b"\x00\x03\x03" + b"\xff" * 50).decode() + ".",
    "?OTR:" + base64.b64encode(b"\x00\x03\x02" + b"\x00" * 8 + b"\xff\xff\xff\xff").decode() + ".",
    "?OTR|12345678|87654321,00001,00002,?OTR:AAM,",
    "?OTR,1,1,x,",
    "?OTRv?",
    "?OTR Error: you are wrong",
    "?OTR:" + "A" * 200_000 + ".",
    "x" * (otr.MAX_MESSAGE_CHARS + 1),
    "nul\0inside",
    "",
])
def test_malformed_input_never_crashes(net, text):
    connect(net)
    bob = net.accounts[BOB]
    result = bob.receiving(ALICE, text)
    net.pump()
    assert result is None or isinstance(result, str)
    # the session survives, both ways (garbage does not switch bob to another context)
    assert bob.state("alice@example.org") == "encrypted"
    net.post(ALICE, BOB, net.accounts[ALICE].sending(BOB, "after"))
    assert net.pump()[-1] == (BOB, "after")
    net.post(BOB, ALICE, bob.sending(ALICE, "back"))
    assert net.pump()[-1] == (ALICE, "back")


def test_malformed_input_reports_error(net):
    connect(net)
    bob = net.accounts[BOB]
    assert bob.receiving(ALICE, "?OTR:AAMDgarbage!!.") is None
    assert bob.receiving(ALICE, "x" * (otr.MAX_MESSAGE_CHARS + 1)) is None
    assert len(net.of(BOB, OtrError)) >= 2


def test_callback_exceptions_are_contained(keys):
    def boom(*_):
        raise RuntimeError("boom")

    a = OtrAccount("alice@example.org", private_key=keys["alice@example.org"], instance_tag=None,
                   fingerprints=None, send=boom, on_event=boom)
    a.start("bob@example.org")
    assert a.receiving("bob@example.org/x", "?OTR:garbage.") is None
    assert a.sending("bob@example.org", "hi").startswith("?OTRv3?")


def test_no_key_material_in_repr_or_logs(net, caplog):
    caplog.set_level(logging.DEBUG)
    connect(net)
    alice = net.accounts[ALICE]
    smp(net, "q?", "hunter2-secret", "hunter2-secret")
    key, _, _ = alice.export_state()
    text = repr(alice) + "".join(repr(e) for j in net.events for e in net.events[j])
    text += caplog.text
    assert "present" in repr(alice) and "private" not in repr(alice)
    assert "hunter2" not in text
    # the DSA private exponent and the key blob never show
    x = key.split(b"(x #")[1].split(b"#")[0].decode()
    assert x not in text and x.lower() not in text
    assert "private-key" not in text


def test_no_file_written(keys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    n = Net()
    a = n.add(ALICE)
    a.generate_key()
    n.add(BOB, keys["bob@example.org"])
    connect(n)
    smp(n, None, "s", "s")
    a.export_state()
    a.end("bob@example.org")
    n.pump()
    assert list(tmp_path.iterdir()) == []


def test_libotr_is_there():
    assert otr.available(), "libotr5 is not installed (Debian package 'libotr5'; ./byline setup installs it)"


def test_struct_layout_matches_headers(tmp_path):
    source = tmp_path / "layout.c"
    source.write_text("""
#include <stdio.h>
#include <stddef.h>
#include <libotr/proto.h>
#include <libotr/context.h>
#include <libotr/message.h>
#include <libotr/instag.h>
int main(void) {
  printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu\\n", sizeof(ConnContext),
    offsetof(ConnContext, their_instance), offsetof(ConnContext, msgstate),
    offsetof(ConnContext, fingerprint_root), offsetof(ConnContext, active_fingerprint),
    offsetof(ConnContext, protocol_version), offsetof(ConnContext, smstate),
    sizeof(OtrlMessageAppOps), offsetof(OtrlInsTag, instag));
  return 0;
}""")
    binary = tmp_path / "layout"
    built = subprocess.run(["gcc", str(source), "-o", str(binary)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, f"gcc and libotr5-dev are in apt-packages.txt: {built.stderr}"
    measured = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.split()
    f = otr._ffi
    ours = [f.sizeof("ConnContext"), f.offsetof("ConnContext", "their_instance"),
            f.offsetof("ConnContext", "msgstate"), f.offsetof("ConnContext", "fingerprint_root"),
            f.offsetof("ConnContext", "active_fingerprint"),
            f.offsetof("ConnContext", "protocol_version"), f.offsetof("ConnContext", "smstate"),
            f.sizeof("OtrlMessageAppOps"), f.offsetof("OtrlInsTag", "instag")]
    assert [int(v) for v in measured] == ours
