"""Runs one lab server and ends its whole process group when the lab's owner goes away.

Started by ``lab.processes.ManagedProcess`` as ``python _guardian.py GRACE_SECONDS -- ARGV...``
in a new session, so the guardian leads the process group that the server and all its children
join. Standard input is a pipe whose write end only the owner holds: end-of-file means the owner
is gone (it stopped, crashed or was killed with SIGKILL), and the guardian then sends SIGTERM to
the group, waits GRACE_SECONDS, and sends SIGKILL. When the server exits by itself, the guardian
sends SIGTERM to whatever the server left in the group and exits with the server's code.
Standard output and error are inherited by the server (the lab log file).

Standard library only: it runs with ``python -I -S`` (no site-packages).
"""

import os
import select
import signal
import subprocess
import sys

# Without a pidfd (old kernels) the server's exit is noticed by polling at this interval.
SERVER_CHECK_INTERVAL_SECONDS = 0.2
EXEC_FAILED_EXIT_CODE = 127


def _ignore_owner_sigterm(signum, frame):
    """The owner stops the lab with SIGTERM to the whole group; the server gets it directly.

    A Python handler (not SIG_IGN) so that the server does not inherit an ignored SIGTERM.
    """


def _end_group(server: subprocess.Popen, grace_seconds: float) -> None:
    os.killpg(0, signal.SIGTERM)
    try:
        server.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    os.killpg(0, signal.SIGKILL)  # ends the guardian too: nothing of the group outlives the owner


def _exit_notifier(pid: int) -> int | None:
    """A descriptor that becomes readable when process ``pid`` exits (a pidfd), if the kernel has them."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _ignore_owner_sigterm)
    if len(argv) < 3 or argv[1] != "--":
        print("usage: _guardian.py GRACE_SECONDS -- ARGV...", file=sys.stderr)
        return 2
    grace_seconds = float(argv[0])
    try:
        server = subprocess.Popen(argv[2:], stdin=subprocess.DEVNULL)
    except OSError as error:
        print(f"lab guardian: cannot start {argv[2]}: {error.strerror}", file=sys.stderr)
        return EXEC_FAILED_EXIT_CODE
    owner_pipe = sys.stdin.fileno()
    watched = [owner_pipe]
    server_exit = _exit_notifier(server.pid)
    if server_exit is not None:
        watched.append(server_exit)
    while server.poll() is None:
        readable, _, _ = select.select(watched, [], [], SERVER_CHECK_INTERVAL_SECONDS)
        if owner_pipe in readable and not os.read(owner_pipe, 1):
            _end_group(server, grace_seconds)
    os.killpg(0, signal.SIGTERM)  # children the server left behind; the guardian survives it
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
