"""The parameter server's wire format: every message type round-trips (in memory and through a
real ROUTER/DEALER pair with copy=False), hostile messages are each rejected with the right
reason, and thousands of random messages never raise anything but WireError."""

from __future__ import annotations

import ast
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from distbp.comm import wire
from distbp.comm.wire import (HEADER_MAX, MESSAGE_TYPES, REASONS, Counters, WireError, add_into, copy_into, sum_into,
                              decode, encode)

_RNG = np.random.default_rng(20240607)
ARRAYS = {
    "start": _RNG.standard_normal((3, 4)).astype(np.float32),
    "grad": _RNG.standard_normal(1000).astype(np.float32),
    "params": _RNG.standard_normal((2, 3, 5)).astype(np.float32),
}
# Fields of one real message of every type (dtype, shape and nbytes come from ARRAYS).
SAMPLES: dict[str, dict] = {
    "hello": {"version": "0.1.0", "config_hash": "9f3a0c1d", "numel": 18_570, "host": "node-1", "pid": 4242},
    "welcome": {"rank": 2, "world": 4, "step": 100},
    "refuse": {"reason": "config_hash differs: server 9f3a0c1d, worker 77b1e2aa"},
    "start": {"step": 0, "rank": 1, "world": 3, "gen": 0},
    "grad": {"step": 7, "rank": 1, "gen": 2, "loss": 0.6931471805599453},
    "params": {"step": 7, "rank": 0, "world": 2, "gen": 2},
    "recut": {"step": 7, "rank": 1, "world": 2, "gen": 3},
    "heartbeat": {"rank": 3, "step": 9},
    "stop": {"reason": "worker 2 silent for 10.0 s", "code": 1},
    "drop": {"reason": "worker 2 silent for 10.0 s (comm.timeout_s) during step 8"},
    "bye": {"rank": 0},
}


def test_the_samples_cover_every_message_type():
    assert set(SAMPLES) == set(MESSAGE_TYPES)
    assert {t for t, spec in MESSAGE_TYPES.items() if spec.payload} == set(ARRAYS)


def test_wire_depends_on_numpy_and_the_standard_library_only():
    tree = ast.parse(Path(wire.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "json", "math", "collections.abc", "types", "typing", "numpy"}


# ---- round trips --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_type_round_trips_through_encode_and_decode(kind):
    array = ARRAYS.get(kind)
    frames = encode(kind, array, **SAMPLES[kind])
    assert isinstance(frames[0], bytes) and len(frames[0]) <= HEADER_MAX
    header, payload = decode(frames)
    expected = {"type": kind, **SAMPLES[kind]}
    if array is None:
        assert len(frames) == 1 and payload is None
    else:
        expected.update(dtype="float32", shape=list(array.shape), nbytes=array.nbytes)
        assert len(frames) == 2
        # The payload frame is the array's own memory, and decode hands back a view of it.
        assert np.shares_memory(np.frombuffer(frames[1], np.uint8), array)
        assert payload.obj is array or np.shares_memory(np.frombuffer(payload, np.uint8), array)
        assert bytes(payload) == array.tobytes()
        np.testing.assert_array_equal(np.frombuffer(payload, np.float32).reshape(array.shape), array)
    assert header == expected


def test_decoded_payload_is_a_view_of_the_received_frame():
    array = ARRAYS["params"]
    head, body = encode("params", array, step=3, rank=0, world=1, gen=0)
    received = bytes(body)  # what a bytes-mode recv_multipart would hand over
    _, payload = decode([head, received])
    assert payload.obj is received
    view = np.frombuffer(payload, np.float32)
    assert not view.flags.owndata and not view.flags.writeable  # a view over the bytes, no copy


def test_header_up_to_exactly_the_limit_is_accepted():
    base = encode("refuse", reason="")[0]
    pad = HEADER_MAX - len(base)
    header, _ = decode([encode("refuse", reason="x" * pad)[0]])
    assert header["reason"] == "x" * pad
    with pytest.raises(WireError) as err:
        encode("refuse", reason="x" * (pad + 1))
    assert err.value.reason == "header-size" and str(err.value) == f"header is {HEADER_MAX + 1} bytes, at most {HEADER_MAX}"


def test_int_is_accepted_as_float_and_returned_as_float():
    header, _ = decode([b'{"type":"grad","step":1,"rank":0,"gen":0,"loss":2,"dtype":"float32","shape":[1],"nbytes":4}',
                        np.float32(1.5).tobytes()])
    assert header["loss"] == 2.0 and type(header["loss"]) is float


def test_a_non_finite_loss_reaches_the_server():
    # A diverging worker's step must arrive so that the server can stop the job naming it.
    header, _ = decode(encode("grad", np.zeros(2, np.float32), step=4, rank=1, gen=0, loss=float("nan")))
    assert math.isnan(header["loss"])
    header, _ = decode(encode("grad", np.zeros(2, np.float32), step=4, rank=1, gen=0, loss=float("inf")))
    assert header["loss"] == math.inf


def test_numpy_scalar_fields_and_zero_size_arrays_encode():
    frames = encode("params", np.zeros((0, 3), np.float32), step=np.int64(12), rank=0, world=1, gen=0)
    header, payload = decode(frames)
    assert header == {"type": "params", "step": 12, "rank": 0, "world": 1, "gen": 0, "dtype": "float32",
                      "shape": [0, 3], "nbytes": 0}
    assert type(header["step"]) is int and payload.nbytes == 0
    header, payload = decode(encode("params", np.array(2.5, np.float32), step=1, rank=0, world=1, gen=0))  # 0-d
    assert header["shape"] == [] and np.frombuffer(payload, np.float32)[0] == np.float32(2.5)


def test_other_dtypes_only_when_both_sides_allow_them():
    array = np.arange(6, dtype=np.float64)
    with pytest.raises(WireError, match="dtype 'float64' not allowed"):
        encode("params", array, step=0, rank=0, world=1, gen=0)
    frames = encode("params", array, step=0, rank=0, world=1, gen=0, dtypes=("float32", "float64"))
    with pytest.raises(WireError) as err:
        decode(frames)
    assert err.value.reason == "dtype"
    header, payload = decode(frames, dtypes=("float32", "float64"))
    assert header["nbytes"] == 48
    with pytest.raises(WireError, match="dtype 'float64' not allowed"):
        decode(frames, dtypes="float64 float32")  # one name, not a substring test
    np.testing.assert_array_equal(np.frombuffer(payload, np.float64), array)


@pytest.mark.parametrize("call, reason, message", [
    (lambda: encode("grad", step=1, rank=0, gen=0, loss=0.5), "frames", "grad message needs a payload array"),
    (lambda: encode("bye", np.zeros(2, np.float32), rank=0), "frames", "bye message carries no payload"),
    (lambda: encode("shutdown"), "type", "unknown message type 'shutdown'"),
    (lambda: encode("params", np.zeros((4, 4), np.float32)[:, ::2], step=1, rank=0, world=1, gen=0), "frames", "not C-contiguous"),
    (lambda: encode("params", np.zeros(4, ">f4"), step=1, rank=0, world=1, gen=0), "dtype", "not in native byte order"),
    (lambda: encode("params", np.zeros(4, object), step=1, rank=0, world=1, gen=0), "dtype", "dtype 'object' not allowed"),
    (lambda: encode("params", [1.0, 2.0], step=1, rank=0, world=1, gen=0), "frames", "payload is list, expected a numpy array"),
    (lambda: encode("params", np.zeros(4, np.float32), step=1, rank=0, world=1, gen=0, nbytes=16), "unknown-field",
     "nbytes come from the payload array"),
    (lambda: encode("welcome", rank=1, world=2), "missing-field", "welcome message lacks step"),
    (lambda: encode("bye", rank=True), "field-type", "rank is bool, expected int"),
    (lambda: encode("bye", rank=0, admin=1), "unknown-field", "bye message has unknown field 'admin'"),
    (lambda: encode("stop", reason="done", code=300), "value", "code 300 out of range [0, 255]"),
])
def test_encode_refuses_what_decode_would_reject(call, reason, message):
    with pytest.raises(WireError) as err:
        call()
    assert err.value.reason == reason and message in str(err.value)


# ---- a real ROUTER/DEALER pair ------------------------------------------------------------

@pytest.fixture
def zmq_pair():
    """A ROUTER bound to a random free loopback port and a factory of DEALERs connected to it;
    every receive has a 5 s deadline, so a lost message fails the test instead of hanging it."""
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    sockets = []

    def make(kind):
        sock = ctx.socket(kind)
        sock.linger = 0
        sock.rcvtimeo = sock.sndtimeo = 5000
        sockets.append(sock)
        return sock

    router = make(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def dealer():
        sock = make(zmq.DEALER)
        sock.connect(f"tcp://127.0.0.1:{port}")
        return sock

    yield zmq, router, dealer
    for sock in sockets:
        sock.close(linger=0)
    ctx.term()


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_type_round_trips_through_router_and_dealer(zmq_pair, kind):
    zmq, router, dealer = zmq_pair
    worker = dealer()
    array = ARRAYS.get(kind)
    # Both directions, copy=False on both sides: frames arrive as zmq.Frame objects.
    worker.send_multipart(encode(kind, array, **SAMPLES[kind]), copy=False)
    ident, *frames = router.recv_multipart(copy=False)
    assert all(isinstance(f, zmq.Frame) for f in frames)
    header, payload = decode(frames)
    assert header["type"] == kind and all(header[k] == v for k, v in SAMPLES[kind].items())
    router.send_multipart([ident, *encode(kind, array, **SAMPLES[kind])], copy=False)
    back, back_payload = decode(worker.recv_multipart(copy=False))
    assert back == header
    if array is None:
        assert payload is None and back_payload is None
    else:
        assert payload.obj is frames[1]  # a view of the received zmq message, not a copy
        assert bytes(payload) == array.tobytes() == bytes(back_payload)


def test_server_sums_gradients_in_place_and_workers_copy_parameters_back(zmq_pair):
    zmq, router, dealer = zmq_pair
    numel = 50_000  # 200 kB: above zmq.COPY_THRESHOLD, so zmq really sends from our memory
    workers = [dealer(), dealer()]
    grads = [np.random.default_rng(seed).standard_normal(numel).astype(np.float32) for seed in (1, 2)]
    losses = [0.75, 0.5]
    for rank, (sock, g) in enumerate(zip(workers, grads)):
        sock.send_multipart(encode("grad", g, step=3, rank=rank, gen=0, loss=losses[rank]), copy=False)

    acc = np.zeros(numel, np.float32)
    idents, seen = [], []
    counters = Counters()
    for _ in workers:
        ident, *frames = router.recv_multipart(copy=False)
        header, payload = decode(frames, expect={"type": "grad", "step": 3, "nbytes": acc.nbytes})
        counters.accept(header["type"])
        add_into(acc, payload)
        idents.append(ident)
        seen.append((header["rank"], header["loss"]))
    assert sorted(seen) == [(0, 0.75), (1, 0.5)]
    np.testing.assert_array_equal(acc, grads[0] + grads[1])  # float32 a + b == b + a exactly

    acc *= np.float32(0.5)  # stands in for the optimizer
    for ident in idents:
        router.send_multipart([ident, *encode("params", acc, step=3, rank=0, world=1, gen=0)], copy=False)
    for sock in workers:
        dest = np.full(numel, np.nan, np.float32)
        header, payload = decode(sock.recv_multipart(copy=False), expect={"type": "params", "step": 3,
                                                                          "nbytes": dest.nbytes})
        copy_into(dest, payload)
        np.testing.assert_array_equal(dest, acc)
    assert counters.summary() == "accepted 2 (grad 2); dropped 0"


def test_a_stale_gradient_over_the_wire_is_dropped_and_counted(zmq_pair):
    zmq, router, dealer = zmq_pair
    worker = dealer()
    worker.send_multipart(encode("grad", np.ones(8, np.float32), step=4, rank=0, gen=0, loss=1.0), copy=False)
    worker.send_multipart([b"\xff\xfe not a header"], copy=False)
    worker.send_multipart(encode("grad", np.ones(8, np.float32), step=5, rank=0, gen=0, loss=1.0), copy=False)
    acc, counters, errors = np.zeros(8, np.float32), Counters(), []
    for _ in range(3):
        _, *frames = router.recv_multipart(copy=False)
        try:
            header, payload = decode(frames, expect={"step": 5, "rank": 0, "nbytes": acc.nbytes})
        except WireError as err:
            counters.drop(err)
            errors.append(str(err))
            continue
        counters.accept(header["type"])
        add_into(acc, payload)
    assert errors == ["out-of-order step 4, expected 5", "header is not UTF-8 (byte 0)"]
    np.testing.assert_array_equal(acc, np.ones(8, np.float32))
    assert counters.summary() == "accepted 1 (grad 1); dropped 2 (step 1, utf8 1)"


# ---- hostile and malformed messages -------------------------------------------------------

def H(**fields) -> bytes:
    """A header frame with exactly these fields, written by hand (not by encode)."""
    return json.dumps(fields, separators=(",", ":")).encode()


GRAD = {"type": "grad", "step": 5, "rank": 1, "gen": 0, "loss": 0.5, "dtype": "float32", "shape": [4], "nbytes": 16}
P16 = np.arange(4, dtype=np.float32).tobytes()


def grad_with(**changes) -> bytes:
    fields = {**GRAD, **changes}
    return H(**{k: v for k, v in fields.items() if v is not DELETE})


DELETE = object()

HOSTILE = [
    # (id, frames, expect, reason, a substring of the message)
    ("random-bytes", [bytes(np.random.default_rng(7).integers(0, 256, 64, dtype=np.uint8))], None,
     "utf8", "header is not UTF-8"),
    ("binary-utf8-garbage", [b"\x00\x01\x02abc"], None, "json", "header is not JSON"),
    ("no-frames", [], None, "frames", "0 frames, expected 1 or 2"),
    ("empty-frame", [b""], None, "header-size", "header is empty"),
    ("two-empty-frames", [b"", b""], None, "header-size", "header is empty"),
    ("three-frames", [grad_with(), P16, P16], None, "frames", "3 frames, expected 1 or 2"),
    ("frame-is-str", ['{"type":"bye","rank":0}'], None, "frames", "frame 0 is str, not bytes"),
    ("frame-is-none", [H(**GRAD), None], None, "frames", "frame 1 is NoneType, not bytes"),
    ("frames-not-a-list", 42, None, "frames", "frames is int, not a list"),
    ("not-json", [b"step=5&rank=1"], None, "json", "header is not JSON"),
    ("truncated-json", [grad_with()[:-1]], None, "json", "header is not JSON"),
    ("utf8-bom", ["\ufeff".encode() + H(type="bye", rank=0)], None, "json", "header is not JSON"),
    ("invalid-utf8-inside", [b'{"type":"refuse","reason":"\xc3\x28"}'], None, "utf8", "byte 27"),
    ("json-array", [b"[1, 2, 3]"], None, "not-object", "header is a JSON list, not an object"),
    ("json-string", [b'"grad"'], None, "not-object", "header is a JSON str"),
    ("json-null", [b"null"], None, "not-object", "header is a JSON NoneType"),
    ("huge-header", [b'{"type":"bye","rank":0' + b" " * 5000 + b"}"], None, "header-size",
     "header is 5023 bytes, at most 4096"),
    ("header-one-over", [H(type="refuse", reason="x" * (HEADER_MAX - 28))], None, "header-size",
     "header is 4097 bytes"),
    ("deeply-nested", [b"[" * 2000 + b"]" * 2000], None, "json", "nested too deeply"),
    ("duplicate-key", [b'{"type":"bye","rank":0,"rank":1}'], None, "json", "duplicate key 'rank'"),
    ("nan-in-int", [b'{"type":"bye","rank":NaN}'], None, "field-type", "rank is float, expected int"),
    ("no-type", [H(rank=0)], None, "type", "header has no type"),
    ("unknown-type", [H(type="shutdown", rank=0)], None, "type", "unknown message type 'shutdown'"),
    ("type-not-str", [H(type=["grad"])], None, "type", "unknown message type ['grad']"),
    ("type-with-newline", [H(type="bye\nFORGED LOG LINE " + "x" * 100)], None, "type",
     "unknown message type 'bye\\nFORGED LOG LINE xxxxxxxxxxxxxxx..."),
    ("missing-field", [grad_with(loss=DELETE), P16], None, "missing-field", "grad message lacks loss"),
    ("missing-payload-fields", [H(type="params", step=1, rank=0, world=1, gen=0), P16], None, "missing-field",
     "params message lacks dtype, shape, nbytes"),
    ("unknown-field", [H(type="bye", rank=0, admin=True)], None, "unknown-field",
     "bye message has unknown field 'admin'"),
    ("pickle-field", [grad_with(pickle="gASV"), P16], None, "unknown-field", "unknown field 'pickle'"),
    ("string-step", [grad_with(step="5"), P16], None, "field-type", "step is str, expected int"),
    ("float-step", [grad_with(step=5.0), P16], None, "field-type", "step is float, expected int"),
    ("bool-rank", [grad_with(rank=True), P16], None, "field-type", "rank is bool, expected int"),
    ("float-numel", [H(type="hello", version="0.1.0", config_hash="ab", numel=12.0)], None, "field-type",
     "numel is float, expected int"),
    ("null-rank", [H(type="bye", rank=None)], None, "field-type", "rank is NoneType, expected int"),
    ("string-loss", [grad_with(loss="0.5"), P16], None, "field-type", "loss is str, expected float"),
    ("bool-loss", [grad_with(loss=False), P16], None, "field-type", "loss is bool, expected float"),
    ("int-loss-too-big", [grad_with(loss=10**400), P16], None, "value", "out of range for a float"),
    ("negative-step", [grad_with(step=-1), P16], None, "value", "step -1 out of range"),
    ("negative-rank", [H(type="bye", rank=-3)], None, "value", "rank -3 out of range"),
    ("step-beyond-int64", [grad_with(step=2**63), P16], None, "value", "step 9223372036854775808 out of range"),
    ("exit-code-256", [H(type="stop", reason="done", code=256)], None, "value", "code 256 out of range [0, 255]"),
    ("world-zero", [H(type="welcome", rank=0, world=0, step=0)], None, "value", "world 0 out of range"),
    ("rank-not-below-world", [H(type="welcome", rank=4, world=4, step=0)], None, "value",
     "rank 4 is not below world 4"),
    ("newline-in-reason", [H(type="refuse", reason="ok\n2026 INFO forged")], None, "value",
     "reason has a control or surrogate character '\\n'"),
    ("lone-surrogate", [b'{"type":"refuse","reason":"\\ud800"}'], None, "value", "surrogate"),
    ("dtype-float64", [grad_with(dtype="float64", nbytes=32), P16 * 2], None, "dtype",
     "dtype 'float64' not allowed (allowed: float32)"),
    ("dtype-object", [grad_with(dtype="object"), P16], None, "dtype", "dtype 'object' not allowed"),
    ("dtype-f4-spaced", [grad_with(dtype="<f4 "), P16], None, "dtype", "dtype '<f4 ' not allowed"),
    ("dtype-f4", [grad_with(dtype="<f4"), P16], None, "dtype", "dtype '<f4' not allowed"),
    ("dtype-pickle", [grad_with(dtype="O"), P16], None, "dtype", "dtype 'O' not allowed"),
    ("dtype-int", [grad_with(dtype=32), P16], None, "field-type", "dtype is int, expected str"),
    ("shape-string", [grad_with(shape="4"), P16], None, "field-type", "shape is str, expected list of int"),
    ("shape-negative", [grad_with(shape=[-4]), P16], None, "shape", "shape[0] is -4, expected a non-negative int"),
    ("shape-float", [grad_with(shape=[2, 2.0]), P16], None, "shape", "shape[1] is 2.0"),
    ("shape-bool", [grad_with(shape=[True, 4]), P16], None, "shape", "shape[0] is True"),
    ("shape-nested", [grad_with(shape=[[4]]), P16], None, "shape", "shape[0] is [4]"),
    ("shape-too-many-dims", [grad_with(shape=[1] * 33), P16], None, "shape", "33 dimensions, at most 32"),
    ("shape-mismatch", [grad_with(shape=[5]), P16], None, "nbytes",
     "shape [5] of float32 is 20 bytes, nbytes says 16"),
    ("nbytes-1e12-small-payload", [grad_with(shape=[250_000_000_000], nbytes=10**12), P16], None,
     "payload-size", "payload is 16 bytes, nbytes says 1000000000000"),
    ("nbytes-1e12-shape-disagrees", [grad_with(nbytes=10**12), P16], None, "nbytes",
     "shape [4] of float32 is 16 bytes, nbytes says 1000000000000"),
    ("nbytes-float-literal", [b'{"type":"params","step":1,"rank":0,"world":1,"gen":0,"dtype":"float32","shape":[4],"nbytes":1e12}', P16],
     None, "field-type", "nbytes is float, expected int"),
    ("payload-longer", [grad_with(), P16 + b"\x00\x00\x80\x3f"], None, "payload-size",
     "payload is 20 bytes, nbytes says 16"),
    ("payload-shorter", [grad_with(), P16[:12]], None, "payload-size", "payload is 12 bytes, nbytes says 16"),
    ("payload-frame-missing", [grad_with()], None, "frames", "grad message needs a payload frame, got 1 frame"),
    ("payload-on-heartbeat", [H(type="heartbeat", rank=0), P16], None, "frames",
     "heartbeat message carries no payload, got 2 frames"),
    ("step-mismatch", [grad_with(step=7), P16], {"step": 5}, "step", "out-of-order step 7, expected 5"),
    ("step-not-in-set", [grad_with(step=7), P16], {"step": {5, 6}}, "step", "out-of-order step 7, expected one of 5, 6"),
    ("nbytes-mismatch", [grad_with(), P16], {"nbytes": 4000, "dtype": "float32"}, "mismatch",
     "wrong nbytes 16, expected 4000"),
    ("unknown-sender", [grad_with(), P16], {"rank": 0}, "mismatch", "wrong rank 1, expected 0"),
    ("unexpected-type", [H(type="bye", rank=1)], {"type": "grad"}, "mismatch", "unexpected 'bye' message, expected grad"),
    ("type-not-in-set", [H(type="hello", version="1", config_hash="a", numel=1)], {"type": {"grad", "heartbeat"}},
     "mismatch", "unexpected 'hello' message, expected one of grad, heartbeat"),
]


@pytest.mark.parametrize("frames, expect, reason, message", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_messages_are_rejected_with_the_right_reason(frames, expect, reason, message):
    with pytest.raises(WireError) as err:
        decode(frames, expect)
    assert err.value.reason == reason
    assert message in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) <= 120  # one short log line
    assert isinstance(err.value, ValueError)


def test_hostile_messages_are_rejected_as_zmq_frames_too():
    zmq = pytest.importorskip("zmq")
    with pytest.raises(WireError, match="out-of-order step 7, expected 5"):
        decode([zmq.Frame(grad_with(step=7)), zmq.Frame(P16)], expect={"step": 5})
    with pytest.raises(WireError, match="payload is 12 bytes"):
        decode([zmq.Frame(grad_with()), zmq.Frame(P16[:12])])


def test_expect_ignores_fields_the_type_does_not_carry_and_rejects_typos():
    # A heartbeat without step passes a step expectation; one with a step is held to it.
    assert decode([H(type="heartbeat", rank=2)], expect={"step": 5, "nbytes": 16})[0]["rank"] == 2
    with pytest.raises(WireError, match="out-of-order step 4, expected 5"):
        decode([H(type="heartbeat", rank=2, step=4)], expect={"step": 5})
    with pytest.raises(ValueError, match="expect: unknown field 'stpe'") as err:
        decode([H(type="heartbeat", rank=2)], expect={"stpe": 5})
    assert not isinstance(err.value, WireError)  # the caller's bug, not the message's
    header, _ = decode([grad_with(), P16], expect={"shape": [4], "loss": 0.5})
    assert header["shape"] == [4]


# ---- receiving arrays in place ------------------------------------------------------------

def test_add_into_and_copy_into_check_sizes_and_destinations():
    payload = memoryview(np.array([1.0, 2.0, 3.0], np.float32).tobytes())
    acc = np.array([10.0, 20.0, 30.0], np.float32)
    assert add_into(acc, payload) is acc
    np.testing.assert_array_equal(acc, [11.0, 22.0, 33.0])
    dest = np.zeros((1, 3), np.float32)
    copy_into(dest, payload)
    np.testing.assert_array_equal(dest, [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="payload is 12 bytes, destination is 16 bytes"):
        add_into(np.zeros(4, np.float32), payload)
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        copy_into(np.zeros(6, np.float32)[::2], payload)
    frozen = np.zeros(3, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        add_into(frozen, payload)


def test_sum_into_is_the_copy_then_add_bit_for_bit():
    rng = np.random.default_rng(0)
    a, b = ((rng.standard_normal(1000) * 10.0 ** rng.integers(-8, 8, 1000)).astype(np.float32) for _ in range(2))
    two_pass = add_into(copy_into(np.empty(1000, np.float32), a.tobytes()), b.tobytes())
    acc = np.full(1000, np.nan, np.float32)
    assert sum_into(acc, a.tobytes(), memoryview(b.tobytes())) is acc
    assert acc.tobytes() == two_pass.tobytes() == (a + b).tobytes()
    with pytest.raises(ValueError, match="payload is 12 bytes, destination is 4000 bytes"):
        sum_into(acc, a.tobytes(), b[:3].tobytes())


# ---- counters -----------------------------------------------------------------------------

def test_counters_count_and_summarize():
    counters = Counters()
    assert counters.summary() == "accepted 0; dropped 0"
    for kind in ["grad"] * 10 + ["heartbeat"] * 2:
        counters.accept(kind)
    for reason in ["step", "json", "step"]:
        counters.drop(reason)
    counters.drop(WireError("payload-size", "payload is 12 bytes, nbytes says 16"))
    assert counters.n_accepted == 12 and counters.n_dropped == 4
    assert counters.summary() == "accepted 12 (grad 10, heartbeat 2); dropped 4 (step 2, json 1, payload-size 1)"
    assert counters.as_dict() == {"accepted": {"grad": 10, "heartbeat": 2},
                                  "dropped": {"step": 2, "json": 1, "payload-size": 1}}


# ---- random messages: WireError or a valid message, never anything else -------------------

def _assert_valid(header: dict, payload, expect: dict | None) -> None:
    """An independent statement of what an accepted message guarantees."""
    spec = MESSAGE_TYPES[header["type"]]
    assert set(spec.required) <= set(header) <= {"type"} | set(spec.required) | set(spec.optional)
    for name, value in header.items():
        kind = {**spec.required, **spec.optional, "type": str}[name]
        if kind is float:
            assert type(value) is float
        elif kind is int:
            assert type(value) is int and 0 <= value <= wire.MAX_INT
        elif kind is str:
            assert type(value) is str and all(ch.isprintable() or ch == " " for ch in value if ord(ch) < 128)
        else:
            assert type(value) is list and all(type(d) is int and d >= 0 for d in value)
    if spec.payload:
        assert header["dtype"] == "float32"
        assert math.prod(header["shape"]) * 4 == header["nbytes"] == payload.nbytes
    else:
        assert payload is None
    for name, wanted in (expect or {}).items():
        assert name not in header or (header[name] in wanted if isinstance(wanted, set) else header[name] == wanted)


_VALUES = [None, True, False, -1, 0, 1, 3, 7, 2**63, 2**64, 1.5, -0.0, 1e308, "", "x", "float32", "float64",
           "<f4", "grad", "bye", "\n", "\ud800", [], [4], [-1], [2, 2], [1.0], {"a": 1}, "y" * 5000]
_NAMES = ["type", "step", "rank", "gen", "loss", "dtype", "shape", "nbytes", "world", "code", "reason", "numel",
          "version", "config_hash", "host", "pid", "x", "__class__", ""]


def _random_message(rng: random.Random) -> tuple[list, dict | None]:
    kind = rng.choice(sorted(SAMPLES))
    mode = rng.randrange(8)
    if mode == 0:  # random bytes, one to three frames
        return [rng.randbytes(rng.randrange(0, 80)) for _ in range(rng.randint(1, 3))], None
    if kind in ARRAYS:  # a payload of random length, so shape and nbytes vary
        array = np.frombuffer(rng.randbytes(4 * rng.randrange(0, 40)), np.float32)
    else:
        array = None
    frames = [bytes(f) for f in encode(kind, array, **SAMPLES[kind])]
    expect = rng.choice([None, None, {"step": 7}, {"nbytes": 16, "dtype": "float32"}, {"type": {"grad", "bye"}}])
    if mode == 1:  # unmutated
        return frames, expect
    if mode == 2:  # flip, insert or delete bytes of the header
        raw = bytearray(frames[0])
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(raw))
            op = rng.randrange(3)
            if op == 0:
                raw[i] = rng.randrange(256)
            elif op == 1:
                raw.insert(i, rng.randrange(256))
            elif len(raw) > 1:
                del raw[i]
        frames[0] = bytes(raw)
        return frames, expect
    header = json.loads(frames[0])
    if mode == 3:  # delete a field
        del header[rng.choice(sorted(header))]
    elif mode in (4, 5):  # set an existing or a new field to some value
        header[rng.choice(_NAMES)] = rng.choice(_VALUES)
    elif mode == 6:  # change the payload frames: drop, extend, truncate or add one
        op = rng.randrange(4)
        if op == 0 and len(frames) == 2:
            frames.pop()
        elif op == 1 and len(frames) == 2:
            frames[1] += rng.randbytes(rng.randint(1, 8))
        elif op == 2 and len(frames) == 2 and frames[1]:
            frames[1] = frames[1][: rng.randrange(len(frames[1]))]
        else:
            frames.append(rng.randbytes(rng.randrange(0, 32)))
    else:  # the header reshaped: wrapped in a list, or serialized with a duplicate key
        if rng.random() < 0.5:
            frames[0] = json.dumps([header]).encode()
            return frames, expect
        key = rng.choice(sorted(header))
        frames[0] = frames[0][:-1] + b"," + json.dumps({key: rng.choice(_VALUES)})[1:].encode()
        return frames, expect
    frames[0] = json.dumps(header).encode()
    return frames, expect


def test_random_messages_decode_to_valid_headers_or_raise_wire_error():
    rng = random.Random(606)
    counters = Counters()
    for _ in range(3000):
        frames, expect = _random_message(rng)
        try:
            header, payload = decode(frames, expect)
        except WireError as err:
            assert err.reason in REASONS
            assert "\n" not in str(err) and len(str(err)) <= 120
            counters.drop(err)
            continue
        _assert_valid(header, payload, expect)
        counters.accept(header["type"])
    assert counters.n_accepted + counters.n_dropped == 3000
    # Both outcomes are exercised substantially, and every reason is reached.
    assert counters.n_accepted >= 250 and counters.n_dropped >= 1500
    assert len(counters.accepted) == len(MESSAGE_TYPES)
    assert set(counters.dropped) == set(REASONS)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_the_server_sums_in_rank_order_whatever_the_arrival_order(n):
    """zmq_ps sums each gradient frame as soon as those of lower ranks are in: every arrival
    order gives the bits of ((g0 + g1) + g2) + g3."""
    from itertools import permutations

    from distbp.comm.zmq_ps import _sum_in_rank_order

    rng = np.random.default_rng(n)
    grads = [(rng.standard_normal(257) * 10.0 ** rng.integers(-6, 6, 257)).astype(np.float32) for _ in range(n)]
    expected = grads[0].copy()
    for g in grads[1:]:
        expected += g
    for order in permutations(range(n)):
        frames, summed, acc = [None] * n, 0, np.full(257, np.nan, np.float32)
        for r in order:
            frames[r] = grads[r].tobytes()
            summed = _sum_in_rank_order(acc, frames, summed)
            prefix = next((i for i, f in enumerate(frames) if f is None), n)
            assert summed == (0 if prefix == 1 < n else prefix)  # the first waits for the second
        assert summed == n and acc.tobytes() == expected.tobytes(), order
