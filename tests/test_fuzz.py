"""Fuzzing a real edge: 10,000 random and malformed requests, no crash, no hang, every answer a status.

Hypothesis builds well-typed but adversarial DecideRequest/TrackRequest messages (huge counts, unknown
placements, long and odd strings, many ids, NaN values, deep attribute maps) and raw byte strings
that are not protobuf at all. Every call has a deadline; afterwards the node must still be healthy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import EdgeProcess, examples, process_group, start_edge
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise.v1 import personalizer_pb2 as pb

pytestmark = pytest.mark.slow  # fuzzes a real edge process

ALLOWED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
RAW_ALLOWED = ALLOWED | {"INTERNAL"}  # bytes that do not deserialize: grpc answers INTERNAL
CODES: Counter[str] = Counter()

# Cheap to draw: hypothesis spends its time on big draws, so long values come from a few fixed shapes.
LONG = ["x" * 3000, "ü" * 700, "\x00" * 200, "i1," * 300]
text = st.text(max_size=20) | st.sampled_from(["", "home", "u1", "i1", *LONG])
ids = st.lists(text, max_size=6) | st.integers(400, 700).map(lambda n: ["i1"] * n)
placement_ids = (
    st.sampled_from(["home", "pdp_similar", "hero_banner", "deals", "promo_slot", "trending"]) | text
)


@st.composite
def decide_requests(draw: st.DrawFn) -> pb.DecideRequest:
    request = pb.DecideRequest(
        user_id=draw(text),
        session_id=draw(text),
        explain=draw(st.booleans()),
        consent=draw(st.lists(st.sampled_from(["personalization", "analytics", "x"]) | text, max_size=4)),
    )
    ctx = request.context
    ctx.country = draw(st.sampled_from(["DE", "US", "", "ZZ"]) | text)
    ctx.channel = draw(text)
    ctx.local_time = draw(st.sampled_from(["2026-11-25T10:00:00+01:00", "not a time", ""]) | text)
    for key, value in draw(st.dictionaries(text, text, max_size=5)).items():
        ctx.attributes[key] = value
    if draw(st.booleans()):
        for i in range(draw(st.integers(0, 80))):
            ctx.attributes[f"k{i}"] = "v"
    if draw(st.integers(0, 9)) < 7:  # mostly well-formed: the success paths get fuzzed too
        valid = ["home", "pdp_similar", "hero_banner", "deals", "promo_slot", "trending"]
        for pid in draw(st.lists(st.sampled_from(valid), min_size=1, max_size=4, unique=True)):
            p = request.placements.add(placement_id=pid, count=draw(st.integers(0, 30)))
            p.seed_item_ids.extend(draw(st.lists(st.sampled_from(["i1", "i2", "i7", "nope"]), max_size=3)))
            p.exclude_ids.extend(draw(st.lists(st.sampled_from(["i1", "i3", "x"]), max_size=3)))
        return request
    for _ in range(draw(st.integers(0, 4) | st.just(17))):
        p = request.placements.add()
        p.placement_id = draw(placement_ids)
        p.count = draw(st.sampled_from([0, 1, 5, 50, 51, 200, 2**32 - 1]))
        p.candidate_ids.extend(draw(ids))
        p.seed_item_ids.extend(draw(st.lists(st.sampled_from(["i1", "i2", "nope"]) | text, max_size=60)))
        p.exclude_ids.extend(draw(ids))
        p.filter = draw(st.sampled_from(["", "category", "price", "region", "flag", "tag", "bogus"]))
        for key, value in draw(
            st.dictionaries(
                st.sampled_from(["category", "min", "max", "country", "flag", "tag", "value"]) | text,
                st.sampled_from(["fashion", "10", "NaN", "-1e400", "DE"]) | text,
                max_size=3,
            )
        ).items():
            p.filter_params[key] = value
    return request


@st.composite
def track_requests(draw: st.DrawFn) -> pb.TrackRequest:
    request = pb.TrackRequest(
        consent=draw(st.lists(st.sampled_from(["personalization", "analytics"]), max_size=2))
    )
    if draw(st.integers(0, 9)) < 7:  # mostly well-formed
        for _ in range(draw(st.integers(1, 5))):
            request.events.add(
                event_id=f"e{draw(st.integers(0, 10**9))}",
                type="view",
                user_id="u1",
                item_id=draw(st.sampled_from(["i1", "i2", "nope"])),
            )
        return request
    for _ in range(draw(st.integers(0, 8) | st.sampled_from([499, 501]))):
        e = request.events.add()
        e.event_id = draw(text)
        e.type = draw(st.sampled_from(["view", "click", "add_to_cart", "purchase", "impression"]) | text)
        e.user_id = draw(text)
        e.session_id = draw(text)
        e.item_id = draw(st.sampled_from(["i1", "i2"]) | text)
        e.value = draw(st.sampled_from([0.0, 9.99, -1.0, float("nan"), float("inf"), 1e308]))
        e.timestamp_ms = draw(st.sampled_from([0, -1, 2**63 - 1, 1_795_000_000_000]))
    return request


@pytest.fixture(scope="module")
def fuzz_edge(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[EdgeProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    with process_group(root / "run") as processes:
        edge = start_edge(processes, root / "data", bundle_dir, "--workers", "1")
        yield edge
        assert edge.stop() == 0, edge.logs()


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_edge: EdgeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_edge.address) as channel:
        yield channel


def _call(channel: grpc.Channel, method: str, payload: bytes) -> str:
    call = channel.unary_unary(f"/edgewise.v1.Personalizer/{method}")
    try:
        call(payload, timeout=10)
        return "OK"
    except grpc.RpcError as exc:
        code = exc.code()
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, "the edge hung on a request"
        return str(code.name)


def fuzz(budget: int) -> settings:
    return settings(
        max_examples=examples(budget),
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def _variants(payload: bytes, cut: int, flip: int) -> list[bytes]:
    """The message and four malformed relatives: truncated, a bit flipped, doubled (protobuf merges
    concatenated messages), and with an unknown field appended."""
    flipped = bytearray(payload or b"\x00")
    flipped[flip % len(flipped)] ^= 1 << (flip % 8)
    return [
        payload,
        payload[: cut % (len(payload) + 1)],
        bytes(flipped),
        payload * 2,
        payload + b"\xf8\x07\x01",
    ]


@fuzz(1300)
@given(request=decide_requests(), cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_fuzz_decide(fuzz_channel: grpc.Channel, request: pb.DecideRequest, cut: int, flip: int) -> None:
    for i, payload in enumerate(_variants(request.SerializeToString(), cut, flip)):
        code = _call(fuzz_channel, "Decide", payload)
        CODES[f"decide:{code}"] += 1
        assert code in (ALLOWED if i in (0, 3, 4) else RAW_ALLOWED)


@fuzz(700)
@given(request=track_requests(), cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_fuzz_track(fuzz_channel: grpc.Channel, request: pb.TrackRequest, cut: int, flip: int) -> None:
    for i, payload in enumerate(_variants(request.SerializeToString(), cut, flip)):
        code = _call(fuzz_channel, "Track", payload)
        CODES[f"track:{code}"] += 1
        assert code in (ALLOWED if i in (0, 3, 4) else RAW_ALLOWED)


@fuzz(300)
@given(payload=st.binary(max_size=2000), method=st.sampled_from(["Decide", "Track"]))
def test_fuzz_raw_bytes(fuzz_channel: grpc.Channel, payload: bytes, method: str) -> None:
    code = _call(fuzz_channel, method, payload)
    CODES[f"raw:{code}"] += 1
    assert code in RAW_ALLOWED


def test_node_is_healthy_after_fuzzing(fuzz_channel: grpc.Channel, fuzz_edge: EdgeProcess) -> None:
    calls = examples(10_000)  # all three fuzz tests ran (or this one alone)
    assert sum(CODES.values()) >= calls or not CODES
    enough = examples(100)
    assert (CODES["decide:OK"] > enough and CODES["decide:INVALID_ARGUMENT"] > enough) or not CODES
    status = health_pb2_grpc.HealthStub(fuzz_channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert fuzz_edge.proc.poll() is None
    assert not any(e.get("event") == "worker_died" for e in fuzz_edge.log_events())
