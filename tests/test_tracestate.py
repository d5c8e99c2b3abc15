"""W3C tracestate/traceparent grammar and the member-with-fields upsert (no OpenTelemetry needed)."""

from __future__ import annotations

import pytest

from stockade.telemetry import tracestate as ts


@pytest.mark.parametrize(
    "key",
    ["a", "vendor", "a" * 256, "x-y_z*/9", "tenant@system", "0tenant@sys", "t" * 241 + "@" + "s" * 14],
)
def test_valid_keys(key: str) -> None:
    assert ts.check_key(key) is None


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "empty"),
        ("a" * 257, "at most 256"),
        ("Vendor", "must start with a-z"),
        ("9vendor", "must start with a-z"),
        ("ven dor", "' '"),
        ("ven,dor", "','"),
        ("ven=dor", "'='"),
        ("ven\ndor", "control character (0x0a)"),
        ("vendör", "non-ASCII"),
        ("t" * 242 + "@sys", "multi-tenant"),
        ("tenant@" + "s" * 15, "multi-tenant"),
        ("tenant@9sys", "multi-tenant"),
        ("a@b@c", "multi-tenant"),
    ],
)
def test_invalid_keys(key: str, why: str) -> None:
    problem = ts.check_key(key)
    assert problem is not None and why in problem


@pytest.mark.parametrize("value", ["x", " leading", "a b", "~!@#$%^&*()[]{}:;'\"<>?/|\\", "v" * 256])
def test_valid_values(value: str) -> None:
    assert ts.check_value(value) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("trailing ", "ends with a space"),
        ("a,b", "','"),
        ("a=b", "'='"),
        ("a\tb", "control character (0x09)"),
        ("a\x7fb", "control character (0x7f)"),
        ("a\r\nInjected: yes", "control character (0x0d)"),
        ("é", "non-ASCII"),
        ("v" * 257, "257 characters"),
    ],
)
def test_invalid_values(value: str, why: str) -> None:
    problem = ts.check_value(value)
    assert problem is not None and why in problem


def test_parse_skips_empty_members_and_whitespace() -> None:
    header = " a=1 ,, \tb@c=x y ,"
    assert ts.parse(header) == [("a", "1"), ("b@c", "x y")]


@pytest.mark.parametrize(
    "header",
    [
        "a=1,a=2",  # duplicate key
        "A=1",
        "a",
        "a=1,b=\x01",
        "a=1,b=x\x00y",
        ",".join(f"k{i}=v" for i in range(33)),
    ],
)
def test_invalid_header_is_dropped_whole(header: str) -> None:
    assert ts.parse(header) == []


def test_parse_accepts_32_members() -> None:
    header = ",".join(f"k{i}=v" for i in range(32))
    assert len(ts.parse(header)) == 32


def test_upsert_updates_fields_in_place_and_keeps_the_rest() -> None:
    theirs = ts.parse("other=1,acme=s:0;keep:yes;opaque;o:old,last=z")
    ours = ts.member("acme", {"s": "1", "new": "v"})
    result = ts.upsert(theirs, [ours])
    # updated member first (W3C), its other fields and opaque parts kept, new field appended
    assert result == [("acme", "s:1;keep:yes;opaque;o:old;new:v"), ("other", "1"), ("last", "z")]
    assert ts.format_header(result) == "acme=s:1;keep:yes;opaque;o:old;new:v,other=1,last=z"


def test_upsert_adds_a_new_member_in_front() -> None:
    result = ts.upsert([("rojo", "00f067aa0ba902b7")], [ts.member("acme@corp", {"t": "a"})])
    assert result == [("acme@corp", "t:a"), ("rojo", "00f067aa0ba902b7")]


def test_upsert_several_members_keeps_configured_order() -> None:
    result = ts.upsert([("b", "x:1"), ("c", "3")], [ts.member("a", {"f": "1"}), ts.member("b", {"y": "2"})])
    assert result == [("a", "f:1"), ("b", "x:1;y:2"), ("c", "3")]


def test_upsert_drops_rightmost_beyond_32_members() -> None:
    theirs = [(f"k{i}", "v") for i in range(32)]
    result = ts.upsert(theirs, [ts.member("acme", {"s": "1"})])
    assert len(result) == 32
    assert result[0] == ("acme", "s:1") and result[-1] == ("k30", "v")


def test_upsert_drops_propagated_fields_that_would_overflow() -> None:
    theirs = [("acme", ";".join(f"f{i}:{'x' * 20}" for i in range(10)))]  # 239 characters
    result = ts.upsert(theirs, [ts.member("acme", {"mine": "y" * 40})])
    value = result[0][1]
    assert ts.check_value(value) is None
    assert value.startswith("f0:") and value.endswith("mine:" + "y" * 40)


def test_upsert_replaces_a_duplicated_field_once() -> None:
    result = ts.upsert([("acme", "s:0;s:9;k:1")], [ts.member("acme", {"s": "1"})])
    assert result == [("acme", "s:1;k:1")]


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"s": "a,b"}, "s", "','"),
        ({"s": "a=b"}, "s", "'='"),
        ({"s": "a;b"}, "s", "';'"),
        ({"s": "a b"}, "s", "' '"),
        ({"s": "a\nb"}, "s", "control character"),
        ({"s": ""}, "s", "empty"),
        ({"bad:name": "1"}, "bad:name", "':'"),
        ({"s": "v" * 300}, "s", "302 characters"),
        ({"s": True}, "s", "string"),
    ],
)
def test_member_errors_name_the_field(fields: dict[str, object], field: str, why: str) -> None:
    with pytest.raises(ts.MemberError) as info:
        ts.member("acme", fields)
    assert info.value.field == field and why in str(info.value)


def test_member_accepts_integers_and_colons_in_values() -> None:
    assert ts.member("acme", {"p": 8, "u": "http://x"}).value == "p:8;u:http://x"


def test_traceparent_round_trip() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    parsed = ts.parse_traceparent(header)
    assert parsed == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
    assert ts.format_traceparent(*parsed) == header


@pytest.mark.parametrize(
    "header",
    [
        "",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
    ],
)
def test_invalid_traceparent(header: str) -> None:
    assert ts.parse_traceparent(header) is None


def test_future_traceparent_version_keeps_known_fields() -> None:
    parsed = ts.parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future")
    assert parsed is not None and parsed[2] == 1
