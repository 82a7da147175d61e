"""RFC 8785 canonical JSON against the RFC's own examples, plus idempotence."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.canonical import canonicalize
from protocol.errors import ProtocolError

NUMBERS = Path(__file__).parent / "vectors" / "jcs" / "rfc8785-numbers.txt"


def _number_vectors():
    for line in NUMBERS.read_text().splitlines():
        if line and not line.startswith("#"):
            bits, expected = line.split()
            yield struct.unpack(">d", bytes.fromhex(bits))[0], expected


@pytest.mark.parametrize("value, expected", list(_number_vectors()))
def test_rfc8785_appendix_b_numbers(value, expected):
    if expected == "error":
        with pytest.raises(ProtocolError):
            canonicalize(value)
    else:
        assert canonicalize(value) == expected.encode()


def test_rfc8785_section_3_2_2_sample():
    """Whitespace removed, keys sorted, numbers in ECMAScript form, minimal string escaping."""
    text = ('{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
            ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
            ' "literals": [null, true, false]}')
    expected = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
                '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    assert canonicalize(json.loads(text)) == expected.encode("utf-8")


def test_rfc8785_section_3_2_3_sorting_by_utf16_code_units():
    text = ('{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", "\\ufb33": "Hebrew Letter Dalet With Dagesh",'
            ' "1": "One", "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control",'
            ' "\\u00f6": "Latin Small Letter O With Diaeresis"}')
    values = [v for v in json.loads(canonicalize(json.loads(text))).values()]
    assert values == ["Carriage Return", "One", "Control", "Latin Small Letter O With Diaeresis",
                      "Euro Sign", "Emoji: Grinning Face", "Hebrew Letter Dalet With Dagesh"]
    # the emoji (surrogates D83D DE00) sorts before U+FB33 although its code point is larger
    assert canonicalize(json.loads(text)).startswith(b'{"\\r":"Carriage Return","1":"One"')


def test_locale_does_not_matter():
    doc = {"sin": 1, "p\u00eache": 2, "p\u00e9ch\u00e9": 3, "peach": 4}
    assert canonicalize(doc) == '{"peach":4,"péché":3,"pêche":2,"sin":1}'.encode()


@pytest.mark.parametrize("bad", [float("nan"), {1: "x"}, {"a": object()}, 10**400, "\ud800"])
def test_unrepresentable_values_are_protocol_errors(bad):
    with pytest.raises(ProtocolError):
        canonicalize(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53 + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(st.characters(exclude_categories=("Cs",)), max_size=8), inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=120, deadline=None)
@given(json_values)
def test_property_canonical_form_is_idempotent_and_parses_back(value):
    once = canonicalize(value)
    parsed = json.loads(once)
    assert canonicalize(parsed) == once
    # the same JSON value comes back (numbers compared as the doubles they are; -0.0 == 0.0)
    assert json.loads(once, parse_int=float) == value


def test_big_integers_are_read_as_doubles_like_javascript():
    assert canonicalize(295147905179352830000) == b"295147905179352830000"
    assert canonicalize({"a": [2**60]}) == b'{"a":[1152921504606847000]}'


any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
wide_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53 + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, -0.0, 1.0, 1e-4, 9.99e-5, 1e16, 1e21, 5e-324, 0.1, 1e-7]) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        any_text | st.sampled_from(["\ue000", "\U0001f600", "\uffff", "a\U00010000"]), inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(wide_values)
def test_property_fast_path_equals_reference_implementation(value):
    """The C-encoder fast path must give exactly the bytes of the reference rfc8785 library."""
    import rfc8785
    assert canonicalize(value) == rfc8785.dumps(value)


contexts = st.sampled_from([
    "https://www.w3.org/ns/activitystreams",
    ["https://www.w3.org/ns/activitystreams", {"vn": "https://verdict-node.org/ns#", "x": {"@id": "vn:x"}}],
    ["https://www.w3.org/ns/activitystreams", {"n": 1}],
    ["https://www.w3.org/ns/activitystreams", {"n": True}],
    ["https://www.w3.org/ns/activitystreams", {"n": 1.0}],
    [],
    {},
])


@settings(max_examples=150, deadline=None)
@given(contexts, st.dictionaries(any_text, wide_values, max_size=4))
def test_property_documents_with_a_context_equal_reference(context, rest):
    """Repeated contexts take the cached-context shortcut: the bytes must still be the reference bytes,
    and 1, 1.0 and true in a context must never be confused."""
    import rfc8785
    doc = {"@context": context, **rest}
    assert canonicalize(doc) == rfc8785.dumps(doc)
    assert canonicalize(doc) == rfc8785.dumps(doc)


def test_cached_context_is_a_private_copy():
    context = ["https://www.w3.org/ns/activitystreams", {"a": "b"}]
    first = canonicalize({"@context": context, "id": "x"})
    context[1]["a"] = "changed"
    assert canonicalize({"@context": context, "id": "x"}) != first
    assert canonicalize({"@context": ["https://www.w3.org/ns/activitystreams", {"a": "b"}], "id": "x"}) == first
