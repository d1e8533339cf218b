"""The state machine: PIN flows and their store requests, lock, sections, forms, text fields."""

from dataclasses import replace

from drivers.keys.events import KeyEvent
from firmware import effects as fx
from firmware.profile import ACCOUNTS_RECORD, SETTINGS_RECORD, Account, Contact, Profile, Settings
from firmware.state import MENU, BootFinished, PhoneState, Tick, form_lines, section_items, step
from firmware.ui.screens import screen_text
from firmware.text_entry import keys_for

NOW = 1_795_686_060.0
PIN = "246810"
TPM_STORE = fx.StoreOpened(exists=True, protection="PIN + TPM 2.0", min_secret_length=6)


def booted(store: fx.StoreOpened | None = TPM_STORE) -> PhoneState:
    state = step(PhoneState(), Tick(NOW))
    if store is not None:
        state = step(state, store)
    return step(state, BootFinished())


def press(state: PhoneState, *keys: str) -> PhoneState:
    for key in keys:
        state = step(state, KeyEvent(key, True))
        state = step(state, KeyEvent(key, False))
    return state


def take(state: PhoneState) -> tuple[PhoneState, tuple]:
    """What the supervisor does: take the requests out of the state."""
    return replace(state, effects=()), state.effects


def unlocked(profile: Profile = Profile(), duress_set: bool = False) -> PhoneState:
    state, requests = take(press(booted(), *PIN, "ok"))
    assert requests == (fx.Unlock(PIN),) and state.screen == "working"
    return step(state, fx.Unlocked(profile, duress_set))


def test_boot_asks_for_the_pin_of_an_existing_store_and_keeps_notices():
    state = step(step(PhoneState(), TPM_STORE), BootFinished(("config x: bad",)))
    assert state.screen == "pin" and state.pin.flow == "unlock" and state.notices == ("config x: bad",)
    assert step(state, BootFinished()) is state


def test_a_new_phone_asks_to_choose_a_pin_twice_then_requests_the_store():
    state = booted(replace(TPM_STORE, exists=False))
    assert state.pin.flow == "setup"
    state = press(state, *"12345", "ok")
    assert "at least 6" in state.pin.hint and state.pin.stage == 0
    state = press(state, "back", "back", "back", "back", "back", *PIN, "ok")
    assert state.pin.stage_name == "confirm"
    mismatch = press(state, *"135799", "ok")
    assert mismatch.pin.stage_name == "new" and "differ" in mismatch.pin.hint and not mismatch.effects
    state, requests = take(press(state, *PIN, "ok"))
    assert requests == (fx.CreateStore(PIN),) and state.screen == "working"
    assert PIN not in repr(requests) and PIN not in repr(state)


def test_without_a_tpm_a_long_passphrase_is_required():
    state = booted(fx.StoreOpened(exists=False, protection="passphrase (no TPM)", min_secret_length=16))
    assert "at least 16" in press(state, *"1" * 15, "ok").pin.hint
    assert press(state, *"1" * 16, "ok").pin.stage_name == "confirm"


def test_the_store_answer_can_arrive_after_boot_finished():
    state = step(booted(store=None), replace(TPM_STORE, exists=False))
    assert state.pin.flow == "setup"


def test_typed_digits_are_masked_and_never_in_the_repr():
    state = press(booted(), "5", "7", "3", "8", "1", "back")
    assert state.pin.digits == "5738" and "5738" not in repr(state)


def test_unlocked_goes_home_with_the_profile():
    profile = Profile(Settings(display_name="desk"), (Account("sip", "a@b", "pw"),), (Contact("Ann", "ann@x"),))
    state = unlocked(profile)
    assert state.screen == "home" and not state.locked and state.profile == profile
    assert state.settings.display_name == "desk"


def test_accounts_without_a_remembered_password_are_asked_for_one_after_unlock():
    profile = Profile(accounts=(Account("xmpp", "a@b", "", remember_password=False), Account("sip", "c@d", "x")))
    state = unlocked(profile)
    assert state.screen == "edit" and state.editor.target == ("password", 0) and state.editor.entry.secret
    state = press(state, *keys_for("s3cret"), "ok")
    assert state.screen == "home" and state.profile.accounts[0].password == "s3cret"
    assert not state.effects, "a password that is not remembered is never sent to the store"
    assert "s3cret" not in repr(state)


def test_a_wrong_pin_shows_the_refusal_and_waits_before_the_next_try():
    state, _ = take(press(booted(), *"999999", "ok"))
    state = step(state, fx.SecretRefused("Wrong: wait 30 s", wait_s=30))
    assert state.screen == "pin" and state.pin.hint == "Wrong: wait 30 s"
    early = press(state, *PIN, "ok")
    assert not early.effects and "wait" in early.pin.hint
    later, requests = take(press(step(state, Tick(NOW + 31)), *PIN, "ok"))
    assert requests == (fx.Unlock(PIN),)


def test_factory_fresh_forgets_everything_and_offers_setup():
    state = unlocked(Profile(contacts=(Contact("Ann", "ann@x"),)))
    fresh = step(state, fx.FactoryFresh())
    assert fresh.screen == "pin" and fresh.pin.flow == "setup" and fresh.profile is None and not fresh.pin.hint
    assert fresh.store.exists is False


def test_inactivity_locks_and_the_right_pin_unlocks_without_reopening_the_store():
    state = unlocked()
    lock_after = state.settings.lock_after_s
    assert step(state, Tick(NOW + lock_after - 1)).screen == "home"
    locked = step(state, Tick(NOW + lock_after))
    assert locked.screen == "pin" and locked.pin.flow == "lock" and locked.locked
    assert locked.profile == state.profile, "calls and chat keep their accounts while locked"
    assert not locked.screen_on, "the screen blanked before the lock (60 s < 120 s)"
    checking, requests = take(press(locked, "ok", *PIN, "ok"))  # the first key only wakes the screen
    assert requests == (fx.VerifySecret(PIN),)
    back = step(checking, fx.SecretAccepted())
    assert back.screen == "home" and not back.locked


def test_lock_after_never_does_not_lock():
    state = replace(unlocked(), settings=Settings(lock_after_s=0, screen_off_s=0))
    assert step(state, Tick(NOW + 10_000)).screen == "home"


def security(state: PhoneState) -> PhoneState:
    return press(state, "ok", str(MENU.index("Security") + 1))


def test_security_section_says_which_protection_is_active():
    labels = [item.label for item in section_items(security(unlocked()))]
    assert "At rest: encrypted" in labels and "Key: PIN + TPM 2.0" in labels


def test_change_pin_asks_current_new_and_repeat():
    state = security(unlocked())
    state = press(state, "down", "down", "ok")
    assert state.pin.flow == "change"
    state, requests = take(press(state, *PIN, "ok", *"135790", "ok", *"135790", "ok"))
    assert requests == (fx.ChangeSecret(PIN, "135790"),)
    done = step(state, fx.SecretAccepted())
    assert done.screen == "section" and done.toast == "PIN changed"


def test_back_on_an_empty_pin_leaves_a_change_flow():
    state = press(security(unlocked()), "down", "down", "ok")
    assert press(state, "back").screen == "section"


def test_duress_pin_must_differ_and_is_shown_as_set():
    state = press(security(unlocked()), "down", "down", "down", "ok")
    assert state.pin.flow == "duress_on"
    same = press(state, *PIN, "ok", *PIN, "ok")
    assert "differ" in same.pin.hint
    state, requests = take(press(state, *PIN, "ok", *"000111", "ok", *"000111", "ok"))
    assert requests == (fx.SetDuress(PIN, "000111"),)
    state = step(state, fx.SecretAccepted())
    assert state.duress_set and "Duress PIN: on" in [i.label for i in section_items(state)]


def test_lock_now():
    state = press(security(unlocked()), *["down"] * 4, "ok")
    assert state.screen == "pin" and state.pin.flow == "lock"


def accounts(state: PhoneState) -> PhoneState:
    return press(state, "ok", str(MENU.index("Accounts") + 1))


def test_adding_an_account_types_its_fields_and_requests_a_save():
    state = press(accounts(unlocked()), "ok")
    assert state.screen == "form" and state.form.kind == "account"
    state = press(state, "ok")  # type: sip -> xmpp
    state = press(state, "down", "ok", *keys_for("ann@example.org"), "ok")
    state = press(state, "down", "ok", *keys_for("Pa55 word!"), "ok")
    state = press(state, "down", "ok")  # remember password: yes -> no
    state, requests = take(press(state, *["down"] * 4, "ok"))  # plain calls refused, udp, no pin; Save
    expected = Account("xmpp", "ann@example.org", "Pa55 word!", remember_password=False)
    assert state.screen == "section" and state.profile.accounts == (expected,)
    assert requests == (fx.SaveProfilePart(ACCOUNTS_RECORD, (expected,)),)


def test_a_bad_address_is_refused_on_the_form():
    state = press(accounts(unlocked()), "ok", "down", "ok", *keys_for("nohost"), "ok")
    state = press(state, *["down"] * 6, "ok")
    assert state.screen == "form" and "name@server" in state.form.problem and not state.effects


def test_a_tls_account_with_a_bad_pin_is_refused_and_a_good_one_kept():
    state = press(accounts(unlocked()), "ok", "down", "ok", *keys_for("ann@sip.example.org"), "ok")
    state = press(state, *["down"] * 4, "ok", "ok")  # transport: udp -> tcp -> tls
    state = press(state, "down", "ok", *keys_for("abc"), "ok", "down", "ok")
    assert "64 digits" in state.form.problem
    pin = "ab" * 32
    state = press(state, "up", "ok", *["back"] * 3, *keys_for(pin), "ok", "down", "ok")
    state, requests = take(state)
    assert state.profile.accounts[0].transport == "tls" and state.profile.accounts[0].tls_pin == pin


def test_deleting_an_account():
    state = accounts(unlocked(Profile(accounts=(Account("sip", "a@b", "pw"),))))
    state = press(state, "ok", *["down"] * 8, "ok")
    assert state.profile.accounts == () and state.effects == (fx.SaveProfilePart(ACCOUNTS_RECORD, ()),)


def test_back_in_an_empty_text_field_cancels_the_edit():
    state = press(accounts(unlocked()), "ok", "down", "ok")
    assert state.screen == "edit"
    assert press(state, "back").screen == "form"


def test_settings_toggle_and_cycle_are_saved():
    state = press(unlocked(), "ok", str(MENU.index("Settings") + 1))
    state, requests = take(press(state, "down", "down", "down", "down", "ok"))
    assert state.settings.call_history is True
    assert requests == (fx.SaveProfilePart(SETTINGS_RECORD, state.settings),)
    state, requests = take(press(state, "up", "ok"))
    assert state.settings.lock_after_s == 300 and requests[0].value.lock_after_s == 300


def test_erase_history_is_requested():
    state = press(unlocked(), "ok", str(MENU.index("Settings") + 1), *["down"] * 6, "ok")
    assert state.effects == (fx.EraseHistory(),)


def test_menu_navigation_wraps_and_goes_back():
    state = press(unlocked(), "ok")
    assert state.screen == "menu" and state.menu_index == 0
    assert press(state, "up").menu_index == len(MENU) - 1
    assert press(state, "down", "8").menu_index == 2
    section = press(state, "down", "ok")
    assert section.screen == "section" and section.section == "Calls"
    assert press(section, "back").screen == "menu"
    assert press(section, "back", "back").screen == "home"
    assert press(unlocked(), "ok", "9").screen == "menu"


def test_section_selection_stays_within_its_items():
    state = replace(press(unlocked(), "ok", "5"), notices=("a", "b", "c", "d"))
    items = section_items(state)
    assert [i.label for i in items[-4:]] == ["! a", "! b", "! c", "! d"]
    assert press(state, *["down"] * 30).section_index == len(items) - 1
    assert press(state, *["down"] * 30, *["up"] * 30).section_index == 0


def test_hook_is_tracked_on_every_screen():
    state = step(unlocked(), KeyEvent("hook", True))
    assert state.off_hook
    assert not step(state, KeyEvent("hook", False)).off_hook


def test_screen_blanks_after_idle_and_first_key_only_wakes():
    state = replace(unlocked(), settings=Settings(screen_off_s=60))
    assert step(state, Tick(NOW + 59)).screen_on
    dark = step(state, Tick(NOW + 61))
    assert not dark.screen_on
    woken = press(dark, "ok")
    assert woken.screen_on and woken.screen == "home", "the waking key must not act"
    assert step(dark, KeyEvent("hook", True)).screen_on


def test_clock_ticks_change_the_face_only_when_the_minute_changes():
    state = unlocked()
    assert step(state, Tick(NOW + 1)).clock == state.clock
    assert step(state, Tick(NOW + 60)).clock != state.clock


def test_twelve_hour_clock():
    state = step(replace(PhoneState(), settings=Settings(clock_24h=False)), Tick(NOW))
    assert state.clock.endswith(("am", "pm"))


def test_unknown_events_leave_the_state_alone():
    state = unlocked()
    assert step(state, object()) is state


# Calls

SIP = Account("sip", "alice@127.0.0.1:5060", "pw")


def call_view(phase: str, security: str = "pending", sas: str = "", incoming: bool = False) -> fx.CallView:
    return fx.CallView("c1", "bob", incoming, phase, security, sas)


def test_digits_at_home_dial_and_ok_places_the_call_from_the_sip_account():
    state = press(unlocked(Profile(accounts=(Account("xmpp", "a@b", "x"), SIP))), "4", "2")
    assert state.screen == "dial" and state.dial == "42"
    state, requests = take(press(state, "ok"))
    assert requests == (fx.PlaceCall(SIP.address, "sip:42@127.0.0.1:5060"),) and state.screen == "home"


def test_lifting_the_handset_on_a_contact_calls_it():
    state = press(unlocked(Profile(accounts=(SIP,), contacts=(Contact("Bob", "bob@127.0.0.1:5060"),))), "ok", "1")
    state, requests = take(step(state, KeyEvent("hook", True)))
    assert requests == (fx.PlaceCall(SIP.address, "sip:bob@127.0.0.1:5060"),)


def test_no_sip_account_is_said_rather_than_dialled():
    state = press(unlocked(), "5", "ok")
    assert not state.effects and state.toast == "No SIP account"


def test_an_incoming_call_is_answered_by_lifting_even_on_the_lock_screen():
    state = step(step(unlocked(), Tick(NOW + 500)), fx.CallChanged(call_view("incoming", incoming=True)))
    assert state.locked and state.call.phase == "incoming"
    _, requests = take(step(state, KeyEvent("hook", True)))
    assert requests == (fx.AnswerCall("c1"),)
    _, requests = take(press(state, "back"))
    assert requests == (fx.EndCall("c1"),), "back rejects"


def test_in_a_secure_call_ok_verifies_down_reports_a_mismatch_digits_are_dtmf_up_holds():
    state = step(unlocked(), fx.CallChanged(call_view("connected", "secure", "k7f2")))
    assert take(press(state, "ok"))[1] == (fx.VerifySas("c1", True),)
    assert take(press(state, "down"))[1] == (fx.VerifySas("c1", False),)
    assert take(press(state, "5"))[1] == (fx.SendDtmf("c1", "5"),)
    assert take(press(state, "up"))[1] == (fx.HoldCall("c1", True),)
    assert take(step(replace(state, off_hook=True), KeyEvent("hook", False)))[1] == (fx.EndCall("c1"),)


def test_an_unencrypted_call_cannot_be_verified():
    state = step(unlocked(), fx.CallChanged(call_view("connected", "not_encrypted")))
    assert not press(state, "ok").effects


def test_an_ended_call_shows_briefly_then_goes():
    state = step(unlocked(), fx.CallChanged(call_view("connected", "verified", "k7f2")))
    ended = step(state, fx.CallChanged(call_view("ended")))
    assert ended.call.phase == "ended"
    assert step(ended, Tick(NOW + 10)).call is None
    assert press(ended, "5").call is None and press(ended, "5").screen == "home"


def test_a_missed_call_shows_at_home_and_in_calls_until_seen():
    state = step(unlocked(), fx.CallChanged(call_view("incoming", incoming=True)))
    state = step(state, fx.CallChanged(replace(call_view("ended", incoming=True), reason="missed")))
    state = press(state, "5")  # dismisses "Call ended"
    assert state.missed_calls == ("bob",) and state.screen == "home"
    calls = press(state, "ok", "down", "ok")  # "2" moves up in the menu, like the arrow above it
    assert [i.label for i in section_items(calls)][0] == "Missed: bob"
    assert press(calls, "back").missed_calls == ()


def test_the_call_log_lists_entries_newest_first_and_erasing_history_clears_it():
    entries = (fx.CallRecord(NOW - 60, "bob@lab", False, "answered", "verified"),
               fx.CallRecord(NOW, "ann@lab", True, "missed", "pending"))
    state = step(unlocked(), fx.CallLogged(entries))
    labels = [i.label for i in section_items(press(state, "ok", "down", "ok"))]
    assert labels[0].startswith("<ann") and labels[1].startswith(">bob") and "answ" in labels[1]
    erased = press(state, "ok", str(MENU.index("Settings") + 1), *["down"] * 6, "ok")
    assert erased.call_log == () and erased.effects == (fx.EraseHistory(),)


def test_the_labs_account_and_contacts_join_the_profile_and_replace_an_earlier_labs():
    own = Account("sip", "carol@127.0.0.1:5060", "pw")
    old = Profile(accounts=(Account("sip", "alice@127.0.0.1:5000", "old"), own,
                            Account("xmpp", "alice@byline.lab", "old", server="127.0.0.1:5222")),
                  contacts=(Contact("Echo (lab)", "echo@127.0.0.1:5000", "echo@byline.lab"), Contact("Ann", "ann@x"),
                            Contact("Bob (lab)", chat="bob@byline.lab")))
    offer = fx.LabOffer("127.0.0.1", frozenset({"alice", "bob", "echo"}),
                        (Account("sip", "alice@127.0.0.1:6000", "new"),
                         Account("xmpp", "alice@byline.lab", "new", server="127.0.0.1:6222")),
                        (Contact("Echo (lab)", "echo@127.0.0.1:6000", "echo@byline.lab"),), domain="byline.lab")
    early = step(booted(), offer)
    assert early.lab_offer == offer and not early.effects, "merged only once unlocked"
    state, requests = take(step(take(press(early, *PIN, "ok"))[0], fx.Unlocked(old)))
    assert [a.address for a in state.profile.accounts] == [own.address, "alice@127.0.0.1:6000", "alice@byline.lab"]
    assert state.profile.accounts[-1].server == "127.0.0.1:6222"
    assert [c.name for c in state.profile.contacts] == ["Ann", "Echo (lab)"]
    assert {r.part for r in requests} == {"accounts", "contacts"} and state.lab_offer is None


def test_down_mutes_once_the_sas_question_is_settled():
    verified = step(unlocked(), fx.CallChanged(call_view("connected", "verified", "k7f2")))
    assert take(press(verified, "down"))[1] == (fx.MuteCall("c1", True),)
    muted = step(verified, fx.CallChanged(replace(call_view("connected", "verified", "k7f2"), muted=True)))
    assert take(press(muted, "down"))[1] == (fx.MuteCall("c1", False),)
    unverified = step(unlocked(), fx.CallChanged(call_view("connected", "secure", "k7f2")))
    assert take(press(unverified, "down"))[1] == (fx.VerifySas("c1", False),), "until then Down means 'differs'"


ANN, BEN = "ann@byline.lab", "ben@byline.lab"
CHATTY = Profile(accounts=(Account("xmpp", ANN, "pw"),), contacts=(Contact("Ben", chat=BEN),))


def said(state: PhoneState, *texts: str, incoming: bool = True) -> PhoneState:
    for text in texts:
        state = step(state, fx.ChatLineAdded(ANN, BEN, fx.ChatLine(1.0, incoming, text, "received")))
    return state


def test_an_xmpp_account_form_shows_server_where_a_sip_one_shows_transport():
    form = press(unlocked(), "ok", str(MENU.index("Accounts") + 1), "ok")
    assert [line.split(":")[0] for line in form_lines(form.form)][5] == "Transport"
    xmpp = press(form, "ok")  # Type: sip -> xmpp
    lines = form_lines(xmpp.form)
    assert lines[0] == "Type: xmpp" and lines[5] == "Server: " and lines[7:] == ("Save", "Register")
    state, requests = take(press(xmpp, "down", "ok", *keys_for(ANN), "ok", "down", "ok", *keys_for("secret1"), "ok",
                                 *["down"] * 6, "ok"))
    assert requests == (fx.RegisterAccount(Account("xmpp", ANN, "secret1")),)
    assert "secret1" not in repr(requests) and state.form.problem == "Registering..."


def test_unread_messages_count_until_the_conversation_is_opened_and_light_nothing_once_read():
    state = said(unlocked(CHATTY), "one", "two")
    state = step(state, fx.ChatLineAdded(ANN, BEN, fx.ChatLine(1.0, True, "key changed", "notice")))
    assert state.chats[0].unread == 2 and screen_text(state)[2] == "2 new messages"
    opened = press(state, "ok", str(MENU.index("Messages") + 1), "ok")
    assert opened.screen == "chat" and opened.chats[0].unread == 0
    assert said(opened, "three").chats[0].unread == 0, "a message on the screen is read"


def test_a_long_conversation_scrolls_and_stays_within_its_lines():
    state = press(said(unlocked(CHATTY), *(f"message {i}" for i in range(10))), "ok",
                  str(MENU.index("Messages") + 1), "ok")
    assert screen_text(state)[-2] == "< message 9"
    up = press(state, *["up"] * 30)
    assert up.chat_scroll == 7 and screen_text(up)[2] == "< message 0"
    assert press(up, *["down"] * 30).chat_scroll == 0


def test_authorising_a_stranger_makes_them_a_contact_and_deny_does_not():
    state = step(unlocked(CHATTY), fx.SubscriptionAsked(ANN, "eve@x.org"))
    state = step(state, fx.SubscriptionAsked(ANN, "max@x.org"))
    messages = press(state, "ok", str(MENU.index("Messages") + 1))
    assert [i.label for i in section_items(messages)][:2] == ["? eve@x.org", "? max@x.org"]
    denied, requests = take(press(messages, "ok", "down", "ok"))
    assert requests == (fx.AnswerSubscription(ANN, "eve@x.org", "deny"),)
    authorised, requests = take(press(denied, "ok", "ok"))
    assert requests[0] == fx.AnswerSubscription(ANN, "max@x.org", "authorise")
    assert authorised.profile.contacts[-1] == Contact("max", chat="max@x.org") and not authorised.chat_requests


def test_the_lock_screen_hides_an_open_conversation():
    state = press(said(unlocked(CHATTY), "secret plans"), "ok", str(MENU.index("Messages") + 1), "ok")
    locked = step(state, Tick(state.now + 10_000))
    assert locked.screen == "pin" and locked.chat_open is None
    assert not any("secret plans" in line for line in screen_text(locked))
