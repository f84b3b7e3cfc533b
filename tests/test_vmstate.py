"""The declarative vmstate framework: QEMU's wire encoding, vmdesc JSON, atomic loads."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from emud.clock import VirtualClock
from emud.vmstate import (
    BOOL,
    INT32,
    TIMER,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    Buffer,
    Field,
    State,
    Subsection,
    Validate,
    VMStateDescription,
    VMStateError,
    parse_section_header,
    section_footer,
    section_header,
    unused,
)

CALLS: list[str] = []


class Inner:
    def __init__(self, clock: VirtualClock) -> None:
        self.a = 0
        self.more = 0
        self.timer = clock.timer(lambda: None)


class Dev:
    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.x = 0
        self.y = 0
        self.n = 0
        self.items = [Inner(self.clock) for _ in range(4)]
        self.arr = [0, 0, 0, 0]
        self.buf = b"\0\0\0"
        self.flag = False
        self.extra = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "x": self.x, "y": self.y, "n": self.n, "arr": list(self.arr), "buf": self.buf,
            "flag": self.flag, "extra": self.extra,
            "items": [(i.a, i.more, i.timer.expire_time) for i in self.items],
        }


def _inner_post_load(state: State, version_id: int) -> None:
    CALLS.append(f"post_load inner {state.a}")


INNER_MORE = VMStateDescription("inner/more", 1, 1, [Field("more", UINT8)])
INNER = VMStateDescription(
    "inner", 1, 1, [Field("a", UINT16), Field("timer", TIMER)],
    subsections=[Subsection(INNER_MORE, lambda i: i.more != 0)],
    post_load=_inner_post_load,
)
EXTRA = VMStateDescription("dev/extra", 1, 1, [Field("extra", UINT64)],
                           loaded=lambda d: CALLS.append("loaded extra"))


def _check_n(state: State) -> str | None:
    return None if state.n <= 4 else f"n is {state.n}, at most 4"


def _post_load(state: State, version_id: int) -> None:
    CALLS.append(f"post_load dev v{version_id}")
    if state.x == 0xEE:
        raise ValueError("x must not be 0xee")


DEV = VMStateDescription(
    "dev", 2, 1,
    [
        Field("x", UINT8),
        Field("y", INT32, version=2),
        unused(2),
        Field("n", UINT8),
        Validate("n", _check_n),
        Field("item", INNER, attr="items", num_field="n"),
        Field("arr", UINT32, num=4),
        Field("buf", Buffer(3)),
        Field("flag", BOOL),
        unused(1),
    ],
    subsections=[Subsection(EXTRA, lambda d: d.extra != 0)],
    pre_save=lambda d: CALLS.append("pre_save"),
    post_save=lambda d: CALLS.append("post_save"),
    pre_load=lambda s: CALLS.append("pre_load"),
    post_load=_post_load,
    loaded=lambda d: CALLS.append("loaded dev"),
)


def sample() -> Dev:
    d = Dev()
    d.x, d.y, d.n = 0x12, -2, 2
    d.items[0].a, d.items[1].a = 0x1234, 0xBEEF
    d.items[1].more = 7
    d.items[0].timer.modify(0x500)
    d.arr = [1, 2, 3, 0xFFFFFFFF]
    d.buf = b"abc"
    d.flag = True
    d.extra = 0x0102030405060708
    return d


EXPECTED = bytes.fromhex(
    "12" "fffffffe" "0000" "02"
    "1234" "0000000000000500"                               # item[0]
    "beef" "ffffffffffffffff" "05" "0a" + b"inner/more".hex() + "00000001" "07"  # item[1]
    "00000001" "00000002" "00000003" "ffffffff" + b"abc".hex() + "01" "00"
    "05" "09" + b"dev/extra".hex() + "00000001" "0102030405060708"
)


def test_encoding_is_qemus_wire_format() -> None:
    assert DEV.save(sample()) == EXPECTED


def test_hooks_run_in_qemus_order() -> None:
    CALLS.clear()
    DEV.save(sample())
    assert CALLS == ["pre_save", "post_save"]
    CALLS.clear()
    DEV.load(Dev(), EXPECTED, 2)
    assert CALLS == ["pre_load", "post_load inner 4660", "post_load inner 48879",
                     "post_load dev v2", "loaded extra", "loaded dev"]


def test_round_trip_restores_every_field_including_timers() -> None:
    src, dst = sample(), Dev()
    DEV.load(dst, DEV.save(src), 2)
    assert dst.snapshot() == src.snapshot()
    assert dst.items[0].timer.pending and dst.items[0].timer.expire_time == 0x500
    assert not dst.items[1].timer.pending


def test_load_cancels_a_timer_the_stream_says_is_idle() -> None:
    dst = Dev()
    dst.items[1].timer.modify(99)
    DEV.load(dst, EXPECTED, 2)
    assert not dst.items[1].timer.pending


def test_deadline_beyond_int64_clamps_to_zero_like_timer_mod() -> None:
    data = bytearray(EXPECTED)
    data[10:18] = (1 << 63).to_bytes(8, "big")  # item[0]'s deadline
    dst = Dev()
    DEV.load(dst, bytes(data), 2)
    assert dst.items[0].timer.expire_time == 0


def test_version_gated_field_is_absent_from_older_streams() -> None:
    v1 = EXPECTED[:1] + EXPECTED[5:]  # drop y (version 2)
    dst = Dev()
    dst.y = 77
    DEV.load(dst, v1, 1)
    assert dst.y == 77 and dst.x == 0x12 and dst.items[1].a == 0xBEEF


@pytest.mark.parametrize("version, message", [
    (3, "dev version 3 is newer than the supported 2"),
    (0, "dev version 0 is older than the minimum 1"),
])
def test_versions_outside_the_range_are_refused(version: int, message: str) -> None:
    with pytest.raises(VMStateError, match=message):
        DEV.load(Dev(), EXPECTED, version)


def assert_untouched(data: bytes, match: str) -> VMStateError:
    dst = sample()
    dst.extra = 1
    before = copy.deepcopy(dst.snapshot())
    with pytest.raises(VMStateError, match=match) as info:
        DEV.load(dst, data, 2)
    assert dst.snapshot() == before
    return info.value


def test_a_truncated_stream_names_the_field_and_changes_nothing() -> None:
    error = assert_untouched(EXPECTED[:19], "stream ends")
    assert error.section == "dev" and error.field == "item[1].a"


def test_trailing_bytes_are_refused() -> None:
    assert_untouched(EXPECTED + b"\x00", "1 unexpected bytes")


def test_validate_entry_rejects_before_the_array_is_read() -> None:
    data = bytearray(EXPECTED)
    data[7] = 9  # n
    error = assert_untouched(bytes(data), "n is 9, at most 4")
    assert error.field == "n"


def test_post_load_failure_leaves_the_device_as_it_was() -> None:
    data = b"\xee" + EXPECTED[1:]
    CALLS.clear()
    assert_untouched(data, "x must not be 0xee")
    assert "loaded dev" not in CALLS


def test_unknown_subsection_with_our_prefix_is_an_error() -> None:
    data = EXPECTED.replace(b"dev/extra", b"dev/extrb")
    assert_untouched(data, "unknown subsection 'dev/extrb'")


def test_subsection_of_the_parent_ends_a_nested_structs_subsections() -> None:
    # item[1] has "inner/more"; the parent's "dev/extra" must not be taken for one of its own
    dst = Dev()
    DEV.load(dst, EXPECTED, 2)
    assert dst.items[1].more == 7 and dst.extra == 0x0102030405060708


def test_absent_subsection_keeps_the_value_and_pre_load_can_default_it() -> None:
    d = sample()
    d.extra = 0
    d.items[1].more = 0
    data = DEV.save(d)
    assert b"dev/extra" not in data and b"inner/more" not in data
    dst = Dev()
    dst.extra = 5
    DEV.load(dst, data, 2)
    assert dst.extra == 5


def test_staged_decode_applies_only_on_request() -> None:
    dst = Dev()
    staged = DEV.decode(dst, EXPECTED, 2)
    assert dst.x == 0 and staged.state.x == 0x12
    assert staged.state.loaded_subsections == {"dev/extra"}
    staged.apply()
    assert dst.x == 0x12
    with pytest.raises(RuntimeError):
        staged.apply()


def test_values_that_do_not_fit_their_type_are_refused_on_save() -> None:
    d = sample()
    d.arr[2] = 1 << 32
    with pytest.raises(VMStateError, match="field 'arr\\[2\\]'"):
        DEV.save(d)


def test_description_is_qemus_vmdesc_entry() -> None:
    desc = DEV.describe(sample(), instance_id=1)
    inner = {"vmsd_name": "inner", "version": 1, "fields": [
        {"name": "a", "type": "uint16", "size": 2},
        {"name": "timer", "type": "timer", "size": 8}]}
    assert desc == {
        "name": "dev", "instance_id": 1, "vmsd_name": "dev", "version": 2,
        "fields": [
            {"name": "x", "type": "uint8", "size": 1},
            {"name": "y", "type": "int32", "size": 4},
            {"name": "unused[0]", "type": "unused_buffer", "size": 2},
            {"name": "n", "type": "uint8", "size": 1},
            # a struct with subsections cannot be compressed: one entry per element
            {"name": "item", "index": 0, "type": "struct", "struct": inner, "size": 10},
            {"name": "item", "index": 1, "type": "struct", "struct": {
                **inner, "subsections": [{"vmsd_name": "inner/more", "version": 1,
                                          "fields": [{"name": "more", "type": "uint8",
                                                      "size": 1}]}]}, "size": 27},
            {"name": "arr", "array_len": 4, "type": "uint32", "size": 4},
            {"name": "buf", "type": "buffer", "size": 3},
            {"name": "flag", "type": "bool", "size": 1},
            {"name": "unused[1]", "type": "unused_buffer", "size": 1},
        ],
        "subsections": [{"vmsd_name": "dev/extra", "version": 1,
                         "fields": [{"name": "extra", "type": "uint64", "size": 8}]}],
    }
    payload, same = DEV.save_described(sample(), 1)
    assert payload == EXPECTED and same == desc


def test_section_framing() -> None:
    header = section_header(9, "dev", 0, 2)
    assert header == bytes.fromhex("04 00000009 03") + b"dev" + bytes.fromhex("00000000 00000002")
    assert section_footer(9) == bytes.fromhex("7e00000009")
    section = DEV.save_section(sample(), 9)
    assert section == header + EXPECTED + section_footer(9)
    parsed, offset = parse_section_header(section)
    assert (parsed.section_id, parsed.idstr, parsed.instance_id, parsed.version_id) == (
        9, "dev", 0, 2)
    assert section[offset:offset + len(EXPECTED)] == EXPECTED
    dst = Dev()
    assert DEV.load_section(dst, section).section_id == 9
    assert dst.snapshot() == sample().snapshot()


@pytest.mark.parametrize("mangle, message", [
    (lambda s: s[:-5] + section_footer(8), "footer closes another section"),
    (lambda s: s[:-5] + b"\x7f" + s[-4:], "expected the section footer"),
    (lambda s: s.replace(b"\x03dev", b"\x03dex", 1), "section is for 'dex'"),
    (lambda s: s + b"\0", "1 bytes after the footer"),
    (lambda s: b"\x01" + s[1:], "expected a full section"),
])
def test_section_framing_errors(mangle: Any, message: str) -> None:
    section = DEV.save_section(sample(), 9)
    dst = Dev()
    with pytest.raises(VMStateError, match=message):
        DEV.load_section(dst, mangle(section))
    assert dst.snapshot() == Dev().snapshot()


def test_a_stream_array_longer_than_the_device_is_refused() -> None:
    loose = VMStateDescription("loose", 1, 1, [
        Field("n", UINT8), Field("item", INNER, attr="items", num_field="n")])
    dst = Dev()
    with pytest.raises(VMStateError, match="5 elements, the device holds 4"):
        loose.load(dst, b"\x05" + bytes(50), 1)


def test_declaration_errors_are_caught_early() -> None:
    with pytest.raises(ValueError, match="not an earlier field"):
        VMStateDescription("bad", 1, 1, [Field("item", INNER, num_field="n")])
    with pytest.raises(ValueError, match="must be named bad/"):
        VMStateDescription("bad", 1, 1, [], subsections=[Subsection(EXTRA, bool)])
