"""The test lab: real Prosody and Kamailio start, answer, authenticate, route calls, and always stop."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slixmpp

from lab import Lab, LabError
from lab import prosody as prosody_module
from lab.kamailio import sip_options_answered
from lab.processes import free_tcp_port, port_is_free, processes_in_group
from lab.prosody import xmpp_stream_opens

ROOT = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / "helpers"
XMPP_OUTCOME_TIMEOUT_SECONDS = 5.0
XMPP_DISCONNECT_TIMEOUT_SECONDS = 2.0
SIP_AGENT_TIMEOUT_SECONDS = 5.0  # the agent's own deadline for registering and calling
HELPER_PROCESS_TIMEOUT_SECONDS = 20.0
OWNER_DEATH_CLEANUP_SECONDS = 5.0  # measured: the servers are gone about 0.1 s after their owner
GONE_POLL_INTERVAL_SECONDS = 0.02
AGENT_STDERR_TAIL_CHARACTERS = 6000


def helper_environment():
    """The environment for helper scripts: this one, with the repository importable."""
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path}


def live_processes(process_groups):
    return [pid for group in process_groups for pid in processes_in_group(group)]


def wait_until_gone(process_groups, timeout):
    """The processes still alive in ``process_groups`` after at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while live_processes(process_groups) and time.monotonic() < deadline:
        time.sleep(GONE_POLL_INTERVAL_SECONDS)
    return live_processes(process_groups)


def test_started_lab_answers_and_stopped_lab_leaves_nothing_behind(lab_factory):
    lab = lab_factory()
    xmpp, sip = lab.xmpp, lab.sip
    assert xmpp_stream_opens(xmpp.host, xmpp.port, xmpp.domain)
    assert sip_options_answered(sip.host, sip.port)
    processes = lab.processes
    assert [process.name for process in processes] == ["prosody", "kamailio"]
    groups = [process.pgid for process in processes]
    assert all(processes_in_group(group) for group in groups)

    lab.stop()

    assert live_processes(groups) == []
    assert [process.returncode for process in processes] == [0, 0]
    assert port_is_free(xmpp.port)
    assert port_is_free(sip.port)
    assert port_is_free(sip.port, udp=True)


def test_servers_stop_when_the_program_that_started_them_is_killed(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, str(HELPERS / "lab_owner.py"), str(tmp_path / "lab")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=helper_environment(),
    )
    groups = []
    try:
        started = owner.stdout.readline()
        assert started, f"the lab owner died before the lab was ready:\n{owner.stderr.read()}"
        lab_info = json.loads(started)
        groups = lab_info["process_groups"]
        assert len(groups) == 2 and all(processes_in_group(group) for group in groups)

        owner.send_signal(signal.SIGKILL)
        owner.wait(HELPER_PROCESS_TIMEOUT_SECONDS)

        left = wait_until_gone(groups, OWNER_DEATH_CLEANUP_SECONDS)
        logs = "\n".join(path.read_text() for path in (tmp_path / "lab").glob("*.log"))
        assert left == [], f"processes {left} outlived their owner\n{logs}"
        assert port_is_free(lab_info["xmpp_port"])
        assert port_is_free(lab_info["sip_port"], udp=True)
    finally:
        owner.kill()
        owner.wait()
        for pid in live_processes(groups):  # only if the lab failed to stop them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_lab_can_run_the_xmpp_server_alone(lab_factory):
    lab = lab_factory(sip=False, users=["carol"])
    assert [process.name for process in lab.processes] == ["prosody"]
    assert xmpp_stream_opens(lab.xmpp.host, lab.xmpp.port, lab.xmpp.domain)
    assert list(lab.users) == ["carol"]
    with pytest.raises(LabError, match="no SIP server"):
        lab.sip


def test_server_that_loses_its_port_to_another_program_starts_on_another(lab_factory, monkeypatch):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken_port = squatter.getsockname()[1]
        ports = iter([taken_port])
        # The race made certain: the first port handed to Prosody is already taken.
        monkeypatch.setattr(prosody_module, "free_tcp_port", lambda: next(ports, None) or free_tcp_port())

        started = lab_factory(sip=False)

        assert started.xmpp.port != taken_port
        assert xmpp_stream_opens(started.xmpp.host, started.xmpp.port, started.xmpp.domain)
        assert prosody_module.PORT_TAKEN_MARKER in (started.directory / "prosody.log").read_text()


@pytest.mark.parametrize(
    ("users", "complaint"),
    [
        (["alice smith"], "lab user name 'alice smith'"),
        (["Alice"], "lab user name 'Alice'"),
        ({"alice": 'pass"word'}, "the password of lab user 'alice'"),
        ({"alice": ""}, "the password of lab user 'alice'"),
        ("alice", "users must be a list of names"),
    ],
)
def test_lab_refuses_user_names_and_passwords_it_cannot_configure(users, complaint):
    with pytest.raises(ValueError, match=complaint):
        Lab(users=users)


async def xmpp_login(service, user, password, *, trust_lab_ca=True):
    """Log in with slixmpp over STARTTLS; return (first outcome event, server certificate or None)."""
    client = slixmpp.ClientXMPP(service.jid(user), password)
    client.enable_direct_tls = False
    if trust_lab_ca:
        client.ssl_context.load_verify_locations(service.ca_path)
    outcome = asyncio.get_running_loop().create_future()

    def finish(event_name):
        if not outcome.done():
            outcome.set_result(event_name)

    # Not "disconnected": on a refused certificate it can come before "ssl_invalid_chain".
    for event_name in ("session_start", "failed_all_auth", "ssl_invalid_chain"):
        client.add_event_handler(event_name, lambda _event, name=event_name: finish(name))
    client.connect(service.host, service.port)
    try:
        result = await asyncio.wait_for(outcome, XMPP_OUTCOME_TIMEOUT_SECONDS)
        ssl_object = client.transport.get_extra_info("ssl_object") if client.transport else None
        certificate = ssl_object.getpeercert() if ssl_object else None
        return result, certificate
    finally:
        await asyncio.wait_for(client.disconnect(), XMPP_DISCONNECT_TIMEOUT_SECONDS)


def test_xmpp_user_logs_in_over_starttls_verified_by_the_lab_ca(lab):
    outcome, certificate = asyncio.run(xmpp_login(lab.xmpp, "alice", lab.users["alice"]))
    assert outcome == "session_start"
    assert ("DNS", lab.xmpp.domain) in certificate["subjectAltName"]


def test_xmpp_login_with_a_wrong_password_is_refused(lab):
    outcome, _ = asyncio.run(xmpp_login(lab.xmpp, "alice", lab.users["alice"] + "x"))
    assert outcome == "failed_all_auth"


def test_xmpp_client_without_the_lab_ca_does_not_trust_the_server(lab):
    outcome, _ = asyncio.run(xmpp_login(lab.xmpp, "alice", lab.users["alice"], trust_lab_ca=False))
    assert outcome == "ssl_invalid_chain"


def run_sip_agent(lab, passwords, call=None):
    """Run tests/helpers/sip_agent.py (pjsua2) for accounts ``passwords`` (name -> password)."""
    job = {
        "registrar": lab.sip.registrar_uri,
        "timeout": SIP_AGENT_TIMEOUT_SECONDS,
        "accounts": {name: {"uri": lab.sip.uri(name), "password": pw} for name, pw in passwords.items()},
    }
    if call is not None:
        job["call"] = call
    agent = subprocess.run(
        [sys.executable, str(HELPERS / "sip_agent.py")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=HELPER_PROCESS_TIMEOUT_SECONDS,
        env=helper_environment(),
    )
    assert agent.returncode == 0, f"sip_agent failed:\n{agent.stderr[-AGENT_STDERR_TAIL_CHARACTERS:]}"
    return json.loads(agent.stdout), agent.stderr


def test_sip_registration_needs_the_right_password(lab):
    result, agent_log = run_sip_agent(
        lab, {"alice": lab.users["alice"], "bob": lab.users["bob"] + "x", "mallory": "guessed"}
    )
    registrations = result["registrations"]
    assert registrations["alice"] == 200, agent_log[-AGENT_STDERR_TAIL_CHARACTERS:]
    assert registrations["bob"] in (401, 403)
    assert registrations["mallory"] in (401, 403)


def test_sip_call_between_two_registered_users_goes_through_the_proxy(lab):
    result, agent_log = run_sip_agent(
        lab,
        {"alice": lab.users["alice"], "bob": lab.users["bob"]},
        call={"from": "alice", "to": lab.sip.uri("bob")},
    )
    assert result["registrations"] == {"alice": 200, "bob": 200}
    assert result["call"] == {
        "status": 200,
        "confirmed": True,
        "answered_by": "bob",
        "callee_disconnected": True,
    }, agent_log[-AGENT_STDERR_TAIL_CHARACTERS:]


def test_sip_call_to_an_unknown_user_gets_404(lab):
    result, _ = run_sip_agent(
        lab, {"alice": lab.users["alice"]}, call={"from": "alice", "to": lab.sip.uri("nobody")}
    )
    assert result["call"] == {"status": 404, "confirmed": False, "answered_by": None}
