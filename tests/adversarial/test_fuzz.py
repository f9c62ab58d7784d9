"""Property-based fuzzing of the receiver's entry points with mutated valid messages.

The entry points are what each MQTT link's thread calls, ``Receiver.alarm_message`` and
``Receiver.video_message``, followed by what the alarm and video threads then do with the
queued work (``drain()`` runs it here, on the test's thread, on a real ledger and store). Each
input starts as a message the box's own encoders make and is mutated at the JSON level (a field
dropped, added, or given another type, an extreme size, control characters) or at the byte
level (bytes flipped, inserted, cut), on its own topic or another's.

Properties, for every input:
- no exception escapes and nothing is logged with a traceback (the receiver's catch-alls, which
  keep its threads alive, are never needed);
- it is handled within MAX_INPUT_S (no stall);
- a valid alarm is stored and confirmed.

The number of inputs tried is printed in the terminal summary ("hostile box"): a bounded number
by default, 100,000 in all with ``--soak``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.centre.intake import Limits
from agent.centre.link import Endpoint
from agent.centre.service import Receiver
from agent.clock import rfc3339
from agent.delivery.protocol import ITEM_ID, MAX_LABEL_CHARS, SITE_ID, Alarm, Status
from agent.video.chain import BoxKey
from tests.adversarial.conftest import figure
from tests.boxmsgs import signed_chunks

pytestmark = pytest.mark.timeout(3600)

MAX_INPUT_S = 1.0
EXAMPLES = 2_000  # per entry point in a normal run
SOAK_EXAMPLES = 50_000  # per entry point with --soak: 100,000 in all
SITE = "school-042"


class Tracebacks(logging.Handler):
    """Every log record that carries an exception: a catch-all was needed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """A receiver whose links are never started: the tests call what their threads call."""
    limits = Limits(alarm_burst_bytes=10**12, min_free_bytes=0)
    rx = Receiver.open(
        Endpoint.parse("mqtt://127.0.0.1:1"),
        "schools",
        tmp_path_factory.mktemp("centre"),
        "fuzz",
        limits=limits,
    )
    yield rx
    rx.ledger.close()


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    logging.getLogger("agent").addHandler(handler)
    yield handler
    logging.getLogger("agent").removeHandler(handler)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> BoxKey:
    return BoxKey.load_or_create(tmp_path_factory.mktemp("box"))


# --- inputs -------------------------------------------------------------------------------------

CONTROLS = st.sampled_from(
    ["\x00", "\x1b[2J", "\u2028", "\u202e", "\x85", "\ud800", "\n", "<2>", "\\", '"']
)
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.builds(lambda c, n: "a" * n + c, CONTROLS, st.integers(0, MAX_LABEL_CHARS + 10)),
    st.integers(0, 200_000).map(lambda n: "a" * n),
    st.sampled_from(
        [
            "",
            "zzz",
            "../../etc/passwd",
            "always",
            "live-x",
            "2026-13-01T00:00:00Z",
            str(uuid.uuid4()).upper(),
            "school-042",
            "school-043",
        ]
    ),
)


def json_mutation(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    keys = st.sampled_from(sorted(valid))
    changed = st.one_of(
        st.tuples(keys, ODD).map(lambda kv: {**valid, kv[0]: kv[1]}),
        keys.map(lambda k: {key: v for key, v in valid.items() if key != k}),
        st.tuples(st.text(max_size=8), ODD).map(lambda kv: {**valid, kv[0]: kv[1]}),
        st.just(valid),
    )
    return changed.map(lambda doc: json.dumps(doc).encode())


def byte_mutation(payload: bytes) -> st.SearchStrategy[bytes]:
    def apply(ops: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(payload)
        for op, where, blob in ops:
            at = where % (len(data) + 1)
            if op == 0:
                data[at : at + len(blob)] = blob  # overwrite
            elif op == 1:
                data[at:at] = blob  # insert
            else:
                del data[at : at + len(blob) + 1]  # cut
        return bytes(data)

    return st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.binary(max_size=6)),
        min_size=1,
        max_size=4,
    ).map(apply)


def alarms() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda site, button, seq, test, kind: json.loads(
            Alarm(
                event_id=str(uuid.uuid4()),
                seq=seq,
                site_id=site,
                button_id=button,
                location="Главный вход",
                kind=kind,
                pressed_at=rfc3339(time.time()),
                clock_synced=True,
                test=test,
            ).to_json()
        ),
        st.one_of(st.just(SITE), st.from_regex(SITE_ID, fullmatch=True)),
        st.from_regex(ITEM_ID, fullmatch=True),
        st.integers(1, 2**53 - 1),
        st.booleans(),
        st.sampled_from(["panic", "fault", "restore"]),
    )


def statuses() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda until: json.loads(
            Status(
                "online",
                SITE,
                rfc3339(time.time()),
                "0.1.0",
                test_mode_until=rfc3339(time.time() + until) if until else None,
            ).to_json()
        ),
        st.one_of(st.none(), st.integers(-3600, 10**6)),
    )


def alarm_link_inputs() -> st.SearchStrategy[tuple[str, bytes]]:
    base = st.one_of(alarms().map(lambda d: ("alarm", d)), statuses().map(lambda d: ("status", d)))

    def mutate(kind_doc: tuple[str, dict[str, Any]]) -> st.SearchStrategy[tuple[str, bytes]]:
        kind, doc = kind_doc
        payload = st.one_of(json_mutation(doc), byte_mutation(json.dumps(doc).encode()))
        topic = st.one_of(
            st.just(f"schools/{doc['site_id']}/{kind}"),
            st.sampled_from(
                [
                    f"schools/{SITE}/alarm",
                    f"schools/{SITE}/status",
                    f"schools/{SITE}/clip/cam",
                    "schools/x/y/z/w",
                    f"schools/{SITE}",
                    "other/prefix/alarm",
                ]
            ),
        )
        return st.tuples(topic, payload)

    return base.flatmap(mutate)


def video_link_inputs(key: BoxKey) -> st.SearchStrategy[tuple[str, bytes]]:
    def chunk(live: bool, size: int, chunk_bytes: int, segments: int) -> list[bytes]:
        event = f"live-{uuid.uuid4()}" if live else str(uuid.uuid4())
        return signed_chunks(key, SITE, event, [b"v" * size] * segments, "cam", chunk_bytes, live)

    chunks = st.builds(
        chunk, st.booleans(), st.integers(1, 5000), st.integers(1, 2000), st.integers(1, 3)
    )

    def mutate(payloads: list[bytes]) -> st.SearchStrategy[tuple[str, bytes]]:
        head, _, data = payloads[0].partition(b"\n")
        kind = "live" if b'"live-' in head else "clip"
        header = json.loads(head)
        mutated = st.one_of(
            json_mutation(header).map(lambda h: h + b"\n" + data),
            byte_mutation(payloads[0]),
            st.sampled_from(payloads),
        )
        topic = st.sampled_from(
            [
                f"schools/{SITE}/{kind}/cam",
                f"schools/{SITE}/clip/cam",
                f"schools/{SITE}/live/cam",
                f"schools/{SITE}/clip/other",
                f"schools/{SITE}/pubkey",
            ]
        )
        return st.tuples(topic, mutated)

    pubkeys = st.one_of(
        st.just(key.public_pem()), byte_mutation(key.public_pem()), st.binary(max_size=2000)
    ).map(lambda p: (f"schools/{SITE}/pubkey", p))
    return st.one_of(chunks.flatmap(mutate), pubkeys)


# --- the properties -----------------------------------------------------------------------------


def fuzz(
    name: str,
    inputs: st.SearchStrategy[tuple[str, bytes]],
    handle: Callable[[str, bytes], None],
    tracebacks: Tracebacks,
    examples: int,
) -> None:
    tried, slowest = 0, 0.0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
    @given(inputs)
    def run(message: tuple[str, bytes]) -> None:
        nonlocal tried, slowest
        topic, payload = message
        started = time.monotonic()
        handle(topic, payload)
        elapsed = time.monotonic() - started
        tried += 1
        slowest = max(slowest, elapsed)
        assert elapsed < MAX_INPUT_S, f"{elapsed:.2f} s on {topic}"
        assert not tracebacks.records, tracebacks.records[0].getMessage()

    run()
    figure(f"fuzz {name}: {tried} inputs, slowest {slowest * 1000:.1f} ms, no exception")


def examples(config: pytest.Config) -> int:
    return SOAK_EXAMPLES if config.getoption("--soak") else EXAMPLES


def test_fuzz_the_alarm_link(
    receiver: Receiver, tracebacks: Tracebacks, pytestconfig: pytest.Config
) -> None:
    def handle(topic: str, payload: bytes) -> None:
        receiver.alarm_message(topic, payload)
        receiver.desk.drain()
        receiver.alarm_link._outgoing.clear()  # receipts: never sent, the link is not started

    fuzz(
        "alarm link (alarm, status)",
        alarm_link_inputs(),
        handle,
        tracebacks,
        examples(pytestconfig),
    )


def test_fuzz_the_video_link(
    receiver: Receiver, tracebacks: Tracebacks, key: BoxKey, pytestconfig: pytest.Config
) -> None:
    def handle(topic: str, payload: bytes) -> None:
        receiver.video_message(topic, payload)
        receiver.assembler.drain()
        receiver.video_link._outgoing.clear()

    fuzz(
        "video link (clip, live, pubkey)",
        video_link_inputs(key),
        handle,
        tracebacks,
        examples(pytestconfig),
    )


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(alarms())
def test_every_valid_alarm_is_stored_and_confirmed(
    receiver: Receiver, alarm: dict[str, Any]
) -> None:
    receiver.alarm_message(f"schools/{alarm['site_id']}/alarm", json.dumps(alarm).encode())
    receiver.desk.drain()
    sent = [json.loads(m.payload) for m in receiver.alarm_link._outgoing]
    receiver.alarm_link._outgoing.clear()
    assert alarm["event_id"] in [e for receipt in sent for e in receipt["alarms"]]


def test_the_store_holds_only_what_the_receiver_wrote(receiver: Receiver) -> None:
    """After every fuzz input: no file outside the site folders, keys/ and the ledger."""
    store: Path = receiver.store
    allowed = {"centre.db", "centre.db-wal", "centre.db-shm", "alarms.jsonl", "keys", SITE}
    names = {p.name for p in store.iterdir()}
    assert names <= allowed | {
        p.name for p in store.iterdir() if p.is_dir() and SITE_ID.fullmatch(p.name)
    }
