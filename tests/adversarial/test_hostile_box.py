"""Issue 10, attack by attack: a hostile box with only its own topics, the real broker, the
real ``edge-agent central``; an honest school's alarms stored within a second throughout.

Each test ends with :func:`assert_clean`: no line of the receiver's log, no line of ``central
status`` and no byte of ``alarms.jsonl`` carries a raw control character, whatever was sent.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.clock import rfc3339
from agent.delivery.protocol import Status
from agent.logs import UNSAFE_CHARS
from agent.video.chain import BoxKey
from tests.adversarial.conftest import (
    HONEST,
    HOSTILE,
    MEMORY_MB,
    Box,
    CentreProcess,
    figure,
    probing,
    rounds,
)
from tests.boxmsgs import signed_chunks
from tests.brokerdoc import Broker, pairs, start_broker
from tests.conftest import REPO, cli, wait_for
from tests.pki import Pki

pytestmark = pytest.mark.timeout(120)
Boxes = Callable[..., Box]


def assert_clean(centre: CentreProcess) -> None:
    """Issue 10.5: nothing a box sent reaches the journal, a terminal or a line reader raw."""
    for line in centre.output().splitlines():
        assert line.startswith(("<3>", "<4>", "<6>", "<7>")), line[:120]
        assert not UNSAFE_CHARS.search(line), line[:120]
    status = cli("central", "--store", str(centre.store), "status")
    assert status.returncode == 0 and not UNSAFE_CHARS.search(status.stdout.replace("\n", ""))
    jsonl = centre.store / "alarms.jsonl"
    if jsonl.exists():
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            assert not UNSAFE_CHARS.search(line)
            json.loads(line)


def valid(box: Box, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(box.alarm().to_json())
    return doc | changes


@pytest.mark.unlimited_broker
def test_one_huge_message_stalls_no_school(centre: CentreProcess, boxes: Boxes) -> None:
    """10.1: 100 KB of 'a' in button_id once stalled every school's alarms for minutes."""
    honest, hostile = boxes(HONEST), boxes(HOSTILE)
    with probing(honest, centre, hostile) as probe:
        for _ in rounds():
            hostile.flood(
                hostile.topic("alarm"),
                [json.dumps(valid(hostile, button_id="a" * 100_000)).encode()] * 20
                + [json.dumps(valid(hostile, location="a" * 3900)).encode()] * 200
                + [json.dumps(valid(hostile, detail="a:" * 1900)).encode()] * 200,
            )
        hostile.client.publish(hostile.topic("alarm"), b"x" * 300_000, qos=1)  # > max_packet_size
        wait_for(hostile.gone.is_set, 10, "the broker to disconnect the sender of 300 KB")
        time.sleep(1.0)
    probe.check("10.1 100 KB fields, 420 oversized alarms, a 300 KB packet", centre)
    assert centre.reports(HOSTILE, "refused")
    assert centre.alarms(HOSTILE) == []
    assert_clean(centre)


@pytest.mark.unlimited_broker
def test_a_text_seq_poisons_nothing(centre: CentreProcess, boxes: Boxes) -> None:
    """10.2: one "seq": "zzz" made every later alarm of the site fail, even after a re-image."""
    honest, hostile = boxes(HONEST), boxes(HOSTILE)
    with probing(honest, centre, hostile) as probe:
        poison: list[object] = ["zzz", "1", 1.5, True, None, [1], {"a": 1}, 2**64, -1, 0]
        for _ in rounds():
            hostile.flood(
                hostile.topic("alarm"),
                [json.dumps(valid(hostile, seq=s)).encode() for s in poison * 20],
            )
        hostile.seq = 0  # the box re-imaged: its seq starts again at 1
        _, seconds = hostile.time_alarm()  # and its next real alarm is stored
    probe.check("10.2 poisoned seq", centre)
    assert [a["seq"] for a in centre.alarms(HOSTILE)] == [1] and seconds < 1.0
    assert_clean(centre)


@pytest.mark.unlimited_broker
def test_video_floods_stay_within_memory_and_disk(
    tmp_path: Path, pki: Pki, broker: Broker, boxes: Boxes
) -> None:
    """10.3: chunks that never complete, live sessions, any number of event ids: RAM and disk
    filled until alarms.jsonl's fsync failed for everyone. Now each site is held to its share
    (memory, open clips, live sessions, disk quota), reports it, and another school's video and
    alarms go on."""
    centre = CentreProcess(
        pki, broker.centre_port, tmp_path / "centre", "schools", "--site-quota-gb", "0.02"
    ).start()
    try:
        honest, hostile = boxes(HONEST), boxes(HOSTILE)
        honest_key = BoxKey.load_or_create(tmp_path)
        (tmp_path / "hostile").mkdir()
        hostile_key = BoxKey.load_or_create(tmp_path / "hostile")
        honest.publish(honest.topic("pubkey"), honest_key.public_pem())
        hostile.publish(hostile.topic("pubkey"), hostile_key.public_pem())
        baseline = centre.rss_mb()
        clip_event = str(uuid.uuid4())
        with probing(honest, centre, hostile) as probe:
            for _ in rounds():
                for _ in range(10):  # 2 MB segments of which 3/4 arrive: they never complete
                    chunks = signed_chunks(
                        hostile_key,
                        HOSTILE,
                        str(uuid.uuid4()),
                        [os.urandom(2 * 1024 * 1024)],
                        "cam",
                    )
                    hostile.flood(hostile.topic("clip/cam"), chunks[:96])
                lives = [
                    signed_chunks(
                        hostile_key,
                        HOSTILE,
                        f"live-{uuid.uuid4()}",
                        [os.urandom(100_000)] * 2,
                        "cam",
                        live=True,
                    )[0]
                    for _ in range(20)
                ]
                hostile.flood(hostile.topic("live/cam"), lives)
                promise = json.loads(lives[0].partition(b"\n")[0]) | {"chunks": 10**9}
                hostile.flood(hostile.topic("clip/cam"), [json.dumps(promise).encode() + b"\nx"])
            honest.flood(
                honest.topic("clip/hall"),
                signed_chunks(honest_key, HONEST, clip_event, [os.urandom(300_000)] * 3, "hall"),
            )
            for _ in range(400):  # tiny complete clips: a folder each, until the quota
                hostile.flood(
                    hostile.topic("clip/cam"),
                    signed_chunks(hostile_key, HOSTILE, str(uuid.uuid4()), [b"v" * 100], "cam"),
                )
            wait_for(
                lambda: (centre.store / HONEST / clip_event / "hall.verify.json").exists(),
                30,
                "the honest school's clip",
            )
        probe.check(
            "10.3 video floods (80 MB never completing, 80 live sessions, 400 clips)", centre
        )
        peak = max(probe.rss_mb)
        figure(
            f"10.3 receiver RSS: {baseline:.0f} MB at start, {peak:.0f} MB peak, with "
            f"--memory-mb {MEMORY_MB}"
        )
        assert peak < baseline + MEMORY_MB + 32, (baseline, peak)
        verdict = json.loads((centre.store / HONEST / clip_event / "hall.verify.json").read_text())
        assert verdict["verified"] is True
        for what in ("evicted", "refused", "over_quota"):
            assert centre.reports(HOSTILE, what), what
        folders = [p for p in (centre.store / HOSTILE).iterdir() if p.name != ".partial"]
        assert len(folders) < 0.02 * 1024**3 / (128 * 1024)  # a clip counts 2 x 64 KB at least
        assert_clean(centre)
    finally:
        centre.stop()


def test_evidence_is_never_replaced(tmp_path: Path, centre: CentreProcess, boxes: Boxes) -> None:
    """10.4: after a restart of the receiver, a box could resend the same (event, camera)
    with new bytes and the file and its ledger row were replaced, still "verified"."""
    honest, hostile = boxes(HONEST), boxes(HOSTILE)
    key = BoxKey.load_or_create(tmp_path)
    hostile.publish(hostile.topic("pubkey"), key.public_pem())
    event = str(uuid.uuid4())
    hostile.flood(
        hostile.topic("clip/cam"),
        signed_chunks(key, HOSTILE, event, [b"what happened" * 1000], "cam"),
    )
    clip = centre.store / HOSTILE / event / "cam.ts"
    wait_for(clip.exists, 10, "the clip")
    evidence = clip.read_bytes()
    assert centre.stop() == 0
    centre.start()
    with probing(honest, centre, hostile) as probe:
        for i in rounds():
            hostile.flood(
                hostile.topic("clip/cam"),
                signed_chunks(key, HOSTILE, event, [b"what did not happen %d" % i * 1000], "cam"),
            )
        wait_for(lambda: centre.reports(HOSTILE, "second_copy"), 10, "the refusal")
    probe.check("10.4 a second copy after a restart", centre)
    assert clip.read_bytes() == evidence
    assert json.loads(clip.with_name("cam.verify.json").read_text())["verified"] is True
    assert_clean(centre)


@pytest.mark.unlimited_broker
def test_forged_log_lines_stay_inside_their_line(centre: CentreProcess, boxes: Boxes) -> None:
    """10.5: a NUL then <2> made journald start a crit record (a fake "ALARM site=school-043"),
    ESC reached the operator's terminal, U+2028 broke readers of alarms.jsonl."""
    honest, hostile = boxes(HONEST), boxes(HOSTILE)
    forged = [
        "x\x00<2>ALARM site=school-043",
        "\x1b]0;owned\x07\x1b[2J",
        "hall\u2028ALARM",
        "\u202eMRALA",
        "\x85<2>x",
        "a\nb\rc",
        "lone \ud800 surrogate",
    ]
    with probing(honest, centre, hostile) as probe:
        for _ in rounds():
            payloads = [json.dumps(valid(hostile, location=f)).encode() for f in forged]
            payloads.append(
                json.dumps(valid(hostile, location="hall\u2028"), ensure_ascii=False).encode()
            )  # raw in UTF-8, too
            payloads += [json.dumps(valid(hostile, detail=f)).encode() for f in forged]
            payloads += [b"\x00<2>ALARM site=school-043\n", b"\xff\xfe\x1b[2J"]
            hostile.flood(hostile.topic("alarm"), payloads)
            status = json.loads(Status("online", HOSTILE, rfc3339(time.time()), "0.1.0").to_json())
            hostile.flood(
                hostile.topic("status"),
                [json.dumps(status | {"reason": f}).encode() for f in forged],
            )
            hostile.flood(hostile.topic("pubkey"), [b"-----BEGIN\x00<2>ALARM\n"])
        # Last, as it ends the attack: Mosquitto closes a box that puts a control character in
        # a topic (MQTT 5 section 1.5.4), so none reaches the receiver.
        hostile.client.publish(f"schools/{HOSTILE}/clip/\x1b[2J", b"{}\nx", qos=1)
        wait_for(hostile.gone.is_set, 10, "the broker to close a box with ESC in a topic")
    probe.check("10.5 control characters in every field", centre)
    assert centre.alarms(HOSTILE) == [] and centre.reports(HOSTILE, "refused")
    assert_clean(centre)
    assert "ALARM site=school-043" not in centre.output()


def test_a_copied_event_id_hides_no_alarm(centre: CentreProcess, boxes: Boxes) -> None:
    """10.6: alarm and clip keys left out the site; a box that learnt another school's event
    id made that school's real alarm a "duplicate" (confirmed, not stored)."""
    honest, hostile = boxes(HONEST), boxes(HOSTILE)
    real = honest.alarm()
    copy = valid(hostile, event_id=real.event_id)
    hostile.flood(hostile.topic("alarm"), [json.dumps(copy).encode()])
    wait_for(lambda: hostile.receipted(real.event_id), 5, "the copy stored as the hostile's")
    honest.flood(honest.topic("alarm"), [real.to_json()])
    wait_for(lambda: honest.receipted(real.event_id), 5, "the real one confirmed")
    assert real.event_id in {a["event_id"] for a in centre.alarms(HONEST)}
    ack = cli("central", "--store", str(centre.store), "ack", real.event_id)
    assert ack.returncode == 1 and "several sites" in ack.stderr
    assert_clean(centre)


def test_sites_named_like_topic_kinds_under_a_deep_prefix(
    tmp_path: Path, pki: Pki, boxes: Boxes
) -> None:
    """10.7: topics were parsed from the end; under police/schools, a site named live or clip
    lost its alarms or had them filed under another site."""
    prefix = "police/schools"
    broker = start_broker(tmp_path / "police-broker", pki, prefix=prefix, log_info=False)
    centre = CentreProcess(pki, broker.centre_port, tmp_path / "centre", prefix).start()
    try:
        key = BoxKey.load_or_create(tmp_path)
        for site in ("live", "clip", HONEST):
            box = boxes(site, prefix, broker.box_port)
            _event, seconds = box.time_alarm()
            assert seconds < 1.0
        live = boxes("live", prefix, broker.box_port)
        live.publish(live.topic("pubkey"), key.public_pem())
        event = str(uuid.uuid4())
        live.flood(live.topic("clip/clip"), signed_chunks(key, "live", event, [b"x" * 500], "clip"))
        wait_for(
            lambda: (centre.store / "live" / event / "clip.verify.json").exists(),
            10,
            "a clip of camera 'clip' from site 'live'",
        )
        assert {a["site_id"] for a in centre.alarms("live")} == {"live"}
        assert {a["site_id"] for a in centre.alarms("clip")} == {"clip"}
        assert_clean(centre)
    finally:
        centre.stop()
        broker.mosquitto.kill()


def test_a_test_flag_the_site_did_not_announce_is_a_real_alarm(
    centre: CentreProcess, boxes: Boxes
) -> None:
    """10.8: the box announces a walk test in its retained status (test_mode_until); an alarm
    flagged test without that is a real alarm at the centre, and the mismatch is reported."""
    box = boxes(HOSTILE)
    now = time.time()
    box.flood(box.topic("status"), [Status("online", HOSTILE, rfc3339(now), "0.1.0").to_json()])
    unannounced = box.alarm(test=True)
    box.flood(box.topic("alarm"), [unannounced.to_json()])
    wait_for(lambda: box.receipted(unannounced.event_id), 5, "the receipt")
    box.flood(
        box.topic("status"),
        [
            Status(
                "online", HOSTILE, rfc3339(now + 1), "0.1.0", test_mode_until=rfc3339(now + 1800)
            ).to_json()
        ],
    )
    announced = box.alarm(test=True)
    box.flood(box.topic("alarm"), [announced.to_json()])
    wait_for(lambda: box.receipted(announced.event_id), 5, "the receipt")
    lines = [json.loads(x) for x in (centre.store / "alarms.jsonl").read_text().splitlines()]
    assert [(x["event_id"], x["test"]) for x in lines] == [
        (unannounced.event_id, False),
        (announced.event_id, True),
    ]
    assert "test_refused" in lines[0]
    assert centre.reports(HOSTILE, "test_not_announced")
    assert_clean(centre)


def test_the_centres_key_and_certificates(
    tmp_path: Path, pki: Pki, broker: Broker, boxes: Boxes
) -> None:
    """10.9: the signing key was in the receiver's store; neither the receiver nor the command
    tool could present a client certificate; mqtts:// used port 1883; --share let a box in."""
    xdg = tmp_path / "xdg"
    made = subprocess.run(
        [sys.executable, "-m", "agent.cli", "central", "keygen"],
        cwd=REPO,
        env={**os.environ, "XDG_CONFIG_HOME": str(xdg)},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert made.returncode == 0, made.stderr
    key = xdg / "edge-agent" / "centre.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    store = tmp_path / "centre"
    inside = cli("central", "--store", str(store), "--key", str(store / "centre.key"), "keygen")
    assert inside.returncode == 1 and "inside the receiver's store" in inside.stderr
    store.mkdir()
    (store / "centre.key").write_bytes(key.read_bytes())
    refused = CentreProcess(pki, broker.centre_port, store).start(wait=False)
    assert refused.proc is not None and refused.proc.wait(20) == 1
    assert "move it" in refused.output()
    assert cli("central", "--share", "g").returncode == 2  # gone

    honest = boxes(HONEST)
    honest.subscribe(honest.topic("cmd"))
    centre = pki.client("centre")
    tls = [
        "--broker",
        f"mqtts://localhost:{broker.centre_port}",
        "--tls-ca",
        str(pki.box_ca),
        "--key",
        str(key),
    ]
    answered = threading.Thread(target=answer_one_command, args=(honest,), daemon=True)
    answered.start()
    ping = cli(
        "central",
        *tls,
        "--tls-cert",
        str(centre.cert),
        "--tls-key",
        str(centre.key),
        "ping",
        HONEST,
        timeout=30,
    )
    assert ping.returncode == 0, ping.stderr
    assert json.loads(ping.stdout)["ok"] is True
    anonymous = cli("central", *tls, "ping", HONEST, timeout=30)
    assert anonymous.returncode == 1 and "did not let us in" in anonymous.stderr


def answer_one_command(box: Box) -> None:
    """The box's side of a command, enough for the command tool to get its result."""
    wait_for(lambda: box.received(box.topic("cmd")), 20, "a command")
    [(_topic, payload)] = pairs(box.received(box.topic("cmd")))
    command = json.loads(payload)
    box.publish(
        box.topic("cmd/result"),
        json.dumps(
            {
                "id": command["id"],
                "ok": True,
                "reason": "",
                "data": {"pong": True},
                "at": rfc3339(time.time()),
                "v": 1,
            }
        ).encode(),
    )


def test_a_flood_at_full_speed(
    tmp_path: Path, pki: Pki, broker: Broker, centre: CentreProcess, boxes: Boxes
) -> None:
    """A box flooding as fast as a C client can (mosquitto_pub -l, QoS 0, a valid-looking alarm
    of a new event each time): the rate a re-flashed box on a school's fibre could reach; the
    Python clients of the other tests stay near 1,500 messages a second. Mosquitto queued all
    of it for the receiver's one session, ahead of every other school's alarm: an honest alarm
    had no receipt after 120 s. The broker's rate limit (broker/rate_limit.c, docs/broker.md)
    now drops what is over the box's budget before it is queued, and says so in its log."""
    count = 100_000
    honest, hostile = boxes(HONEST), boxes(HOSTILE)
    lines = tmp_path / "flood.txt"
    with open(lines, "w") as f:
        f.writelines(json.dumps(valid(hostile, seq=seq)) + "\n" for seq in range(1, count + 1))
    hostile.close()  # mosquitto_pub takes its place, with its certificate
    identity = pki.site(HOSTILE)
    with probing(honest, centre, hostile) as probe:
        for _ in rounds():
            with open(lines, "rb") as stdin:
                subprocess.run(
                    [
                        "mosquitto_pub",
                        "-h",
                        "localhost",
                        "-p",
                        str(broker.box_port),
                        "-V",
                        "mqttv5",
                        "--cafile",
                        str(pki.box_ca),
                        "--cert",
                        str(identity.cert),
                        "--key",
                        str(identity.key),
                        "-i",
                        HOSTILE,
                        "-t",
                        f"schools/{HOSTILE}/alarm",
                        "-q",
                        "0",
                        "-l",
                    ],
                    stdin=stdin,
                    check=True,
                    timeout=60,
                )
            hostile.sent += count
    probe.check("10.x a flood from a C client", centre)
    assert broker.limited() == {HOSTILE}
