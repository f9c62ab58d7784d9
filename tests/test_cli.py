"""The command line as a technician meets it: check-config on broken files, selftest."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.clock import clock_synced
from agent.testing.broker import Mosquitto
from tests.conftest import cli, write_config
from tests.video_fixtures import make_mpeg4_file

BAD = sorted((Path(__file__).parent / "configs" / "bad").glob("*.yaml"))
EXPECTED = yaml.safe_load((Path(__file__).parent / "configs" / "bad-expected.yaml").read_text())


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_check_config_names_key_and_line_exit_2(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    for expected in EXPECTED[path.name]:
        line = f":{expected['line']}: " if expected["line"] else ": "
        assert f"{line}{expected['path']}" in err
    assert "Traceback" not in err


def test_check_config_as_a_process(tmp_path: Path) -> None:
    bad = cli("check-config", "-c", str(BAD[0]))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "problem" in bad.stderr
    missing = cli("check-config", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    good = write_config(tmp_path / "good.yaml", 1883, tmp_path / "state")
    ok = cli("check-config", "-c", str(good))
    assert ok.returncode == 0 and "OK" in ok.stdout


def test_selftest_on_the_simulated_school(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_config(tmp_path / "agent.yaml", broker.port, tmp_path / "state")
    r = cli("selftest", "-c", str(cfg), timeout=60)
    rows = {
        line.split()[0]
        + (" " + line.split()[1] if line.startswith(("button", "camera")) else ""): line
        for line in r.stdout.splitlines()
        if line.strip() and not line.startswith((" ", "\n")) and "passed," not in line
    }
    assert "PASS" in rows["disk"] and "PASS" in rows["broker"]
    assert all("PASS" in rows[f"button {b}"] for b in ("entrance", "gym", "office", "corridor"))
    assert ("PASS" in rows["clock"]) == clock_synced()
    assert r.returncode == (0 if clock_synced() else 1)
    assert "Traceback" not in r.stdout + r.stderr


def test_selftest_says_what_to_do_when_the_broker_is_down(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = write_config(tmp_path / "agent.yaml", broker.port, tmp_path / "state")
    broker.kill()
    r = cli("selftest", "-c", str(cfg), timeout=60)
    assert r.returncode == 1
    broker_line = next(line for line in r.stdout.splitlines() if line.startswith("broker"))
    assert "FAIL" in broker_line
    assert "-> check mqtt.host/port" in r.stdout


@pytest.fixture
def service_owned_storage() -> Iterator[Path]:
    """A storage dir owned by an unprivileged user, as install.sh makes /var/lib/edge-agent,
    somewhere that user can reach (pytest's own tmp dirs are root-only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: selftest as root in a directory another user owns")
    top = Path(tempfile.mkdtemp(prefix="edge-selftest-"))
    top.chmod(0o755)
    storage = top / "state"
    storage.mkdir(mode=0o750)
    nobody = pwd.getpwnam("nobody")
    os.chown(storage, nobody.pw_uid, nobody.pw_gid)
    yield storage
    shutil.rmtree(top)


def _disk_row(cfg: Path) -> str:
    r = cli("selftest", "-c", str(cfg), timeout=60)
    assert "Traceback" not in r.stdout + r.stderr
    return next(line for line in r.stdout.splitlines() if line.startswith("disk"))


def test_selftest_as_root_probes_the_disk_as_the_service_user(
    tmp_path: Path, broker: Mosquitto, service_owned_storage: Path
) -> None:
    """Root never writes in the service user's directory, and the check tells what the
    service can do, not what root can (issue 10, item 8)."""
    cfg = write_config(tmp_path / "agent.yaml", broker.port, service_owned_storage)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    for pid in range(1, 70000, 997):  # the old probe's predictable names, planted by the service
        (service_owned_storage / f".selftest-{pid}").symlink_to(victim)
    assert "PASS" in _disk_row(cfg)
    assert victim.read_text() == "untouched"
    assert (
        sorted(p.name for p in service_owned_storage.iterdir() if not p.is_symlink()) == []
    )  # the probe left nothing behind

    service_owned_storage.chmod(0o550)  # the service user may not write: root could
    row = _disk_row(cfg)
    assert "FAIL" in row and "the directory's owner" in row, row


def _none_running(path: Path) -> bool:
    """No process has ``path`` in its command line (pgrep found none, and did not fail)."""
    return subprocess.run(["pgrep", "-f", str(path)], capture_output=True).returncode == 1


def test_demo_shows_the_alarm_and_clip_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The README's first command: it presses a button, shows what the centre received, and
    stops cleanly on Ctrl-C (SIGINT), leaving no broker behind."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo", "--state", str(tmp_path / "demo")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops the demo" in line or not line:
                break
        text = "".join(lines)
        assert "ЦОУ <- ALARM sim-school/entrance" in text, text
        assert "ЦОУ <- CLIP entrance-cam" in text, text
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "demo stopped." in out
        assert "Traceback" not in text + out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "demo" / "broker").exists()  # the demo kept its state where asked
    assert _none_running(tmp_path / "demo" / "broker"), "a broker outlived the demo"


def test_demo_exit_passes_when_the_alarm_and_every_clip_arrive(tmp_path: Path) -> None:
    """CI's check (.ci/run): `demo --exit` is 0 only once the centre has the alarm and the clip."""
    r = cli("demo", "--exit", "--state", str(tmp_path / "demo"), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ЦОУ <- ALARM sim-school/entrance" in r.stdout
    assert "ЦОУ <- CLIP entrance-cam" in r.stdout and "demo stopped." in r.stdout


def test_demo_exit_fails_in_one_line_when_a_camera_sends_no_clip(tmp_path: Path) -> None:
    """A camera that cannot start (it sends MPEG-4 Part 2, not H.264): the alarm arrives, its
    clip cannot, and `demo --exit` says so and exits 1 (it used to exit 0: CI could not fail)."""
    not_h264 = make_mpeg4_file(tmp_path / "mpeg4.mp4")
    school = tmp_path / "school.yaml"
    school.write_text(
        yaml.safe_dump(
            {
                "site": {"id": "demo-school", "name": "A school with a broken camera"},
                "buttons": [
                    {
                        "id": "hall",
                        "pin": 17,
                        "location": "Hall",
                        "wiring": "normally_open",
                        "cameras": ["hall-cam"],
                    }
                ],
                "cameras": [
                    {
                        "id": "hall-cam",
                        "source": f"file://{not_h264}",
                        "segment_s": 1,
                        "pre_alarm_s": 2,
                        "post_alarm_s": 2,
                    }
                ],
            }
        )
    )
    r = cli("demo", "--exit", "--state", str(tmp_path / "demo"), "-c", str(school), timeout=90)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ЦОУ <- ALARM demo-school/hall" in r.stdout, r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last == "edge-agent: no clip from hall-cam (see the log above)", r.stderr
    assert "Traceback" not in r.stderr and "demo stopped." in r.stdout
    assert _none_running(tmp_path / "demo" / "broker"), "a broker outlived the demo"
