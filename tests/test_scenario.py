"""The scenario runner as a person uses it: ./byline scenario SCRIPT OUT."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from firmware.scenario import ScriptError, parse_script

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "tests" / "scenarios" / "tour.txt"


def run_scenario(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware.scenario", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_command_writes_every_frame_and_every_snap(tmp_path):
    result = run_scenario(str(TOUR), str(tmp_path))
    assert result.returncode == 0, result.stderr
    snaps = sorted(p.name for p in tmp_path.glob("*.png"))
    assert snaps == sorted(f"{line.split()[1]}.png" for line in TOUR.read_text().splitlines()
                           if line.startswith("snap "))
    frames = sorted((tmp_path / "frames").glob("frame_*.png"))
    assert len(frames) >= len(snaps)
    assert all(Image.open(f).size == (128, 64) for f in frames)


@pytest.mark.parametrize(("script", "message"), [
    ("wait nowhere\n", "line 1: wait takes one of"),
    ("# fine\npress 1 x\n", "line 2: press takes keys"),
    ("advance soon\n", "line 1: advance takes seconds"),
    ("snap ../escape\n", "line 1: snap takes one name"),
    ("dance\n", "line 1: unknown step 'dance'"),
    ('press "1\n', "line 1: No closing quotation"),
    ("mark two words\n", "line 1: mark takes one name"),
    ("await go soon\n", "line 1: await takes one name"),
])
def test_a_bad_script_names_its_line(script, message):
    with pytest.raises(ScriptError, match=message):
        parse_script(script)


@pytest.mark.parametrize(("script", "status", "message"), [
    ("press 1\nlift now\n", 2, "line 2: lift takes nothing"),  # a bad script
    ("wait menu\n", 1, "screen is 'pin'"),  # a screen that never comes
    ("await go 0.5\n", 1, "stdin ended before 'go' came"),  # nobody to say go
])
def test_the_command_fails_clearly_without_a_traceback(tmp_path, script, status, message):
    path = tmp_path / "script.txt"
    path.write_text(script)
    result = run_scenario(str(path), str(tmp_path / "out"))
    assert result.returncode == status
    assert message in result.stderr and "Traceback" not in result.stderr


def test_phones_take_turns_with_mark_and_await(tmp_path):
    """``mark`` tells the driver where the script is; ``await`` holds it until the driver says go."""
    path = tmp_path / "script.txt"
    path.write_text("wait pin\nmark ready\nawait go 30\npress 1\nmark done\n")
    process = subprocess.Popen([sys.executable, "-m", "firmware.scenario", str(path), str(tmp_path / "out")],
                               cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        assert process.stdout.readline() == "mark: ready\n"
        process.stdin.write("not yet\ngo\n")
        process.stdin.flush()
        assert process.stdout.readline() == "mark: done\n"
        assert process.wait(30) == 0, process.stderr.read()
    finally:
        process.kill()
        process.wait()
