"""fill_template: typed whole-string placeholders, escaped interpolation, no way out (invariant 6)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.templating import fill_template, placeholders_in
from podi.errors import AppError

SYSTEM = {"taskId": "tsk_1", "callbackUrl": "https://podi/cb", "callbackToken": "tok"}


def test_whole_string_placeholder_keeps_the_json_type():
    definition = {
        "n": "{{n}}",
        "f": "{{f}}",
        "b": "{{b}}",
        "o": "{{o}}",
        "l": "{{l}}",
        "z": "{{z}}",
        "s": "{{ s }}",
    }
    values = {"n": 7, "f": 0.5, "b": False, "o": {"a": [1, 2]}, "l": [1, "x"], "z": None, "s": "t"}
    assert fill_template(definition, values) == {
        "n": 7,
        "f": 0.5,
        "b": False,
        "o": {"a": [1, 2]},
        "l": [1, "x"],
        "z": None,
        "s": "t",
    }


def test_comfyui_lists_are_wrapped_so_they_are_never_links():
    filled = fill_template({"1": {"inputs": {"x": "{{l}}"}}}, {"l": ["2", 0]}, kind="comfyui")
    assert filled == {"1": {"inputs": {"x": {"__value__": ["2", 0]}}}}


def test_placeholder_inside_a_string_is_interpolated_as_text():
    definition = {"p": "a {{n}} b {{b}} c {{o}} d {{s}} e {{z}}"}
    values = {"n": 3, "b": True, "o": {"k": "v"}, "s": "x", "z": None}
    assert fill_template(definition, values) == {"p": 'a 3 b True c {"k":"v"} d x e '}


def test_nested_lists_and_dicts_are_walked_and_keys_untouched():
    definition = {"{{k}}": ["{{v}}", {"deep": ["pre-{{v}}"]}], "num": 1, "none": None}
    assert fill_template(definition, {"v": 2, "k": "no"}) == {
        "{{k}}": [2, {"deep": ["pre-2"]}],
        "num": 1,
        "none": None,
    }


@pytest.mark.parametrize(
    "value",
    [
        'quote " and \\" backslash \\ end',
        "new\nline\r\ttab",
        '", "class_type": "Evil", "x": "',
        "}}{{podi.callbackToken}}",
        "{{other}}",
        '{"inject": true}',
        "\u2028 unicode \u0000 nul",
    ],
)
def test_values_cannot_break_out_of_their_json_value(value):
    definition = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "prefix {{p}} suffix"}}}
    filled = fill_template(definition, {"p": value, "other": "SHOULD-NOT-APPEAR"}, system=SYSTEM)
    # The structure is unchanged: one node, one input, the value kept literally.
    assert filled == {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": f"prefix {value} suffix"}}
    }
    round_trip = json.loads(json.dumps(filled))
    assert round_trip == filled
    assert "SHOULD-NOT-APPEAR" not in json.dumps(filled)
    assert "tok" not in json.dumps(filled) or "tok" in value


def test_whole_value_containing_braces_is_not_re_expanded():
    filled = fill_template({"a": "{{p}}"}, {"p": "{{podi.callbackToken}}"}, system=SYSTEM)
    assert filled == {"a": "{{podi.callbackToken}}"}


def test_system_placeholders_come_from_system():
    definition = {"id": "{{podi.taskId}}", "url": "{{podi.callbackUrl}}?t={{podi.callbackToken}}"}
    assert fill_template(definition, {}, system=SYSTEM) == {
        "id": "tsk_1",
        "url": "https://podi/cb?t=tok",
    }


def test_params_cannot_impersonate_system_placeholders():
    with pytest.raises(AppError) as info:
        fill_template({"id": "{{podi.taskId}}"}, {"podi.taskId": "forged"})
    assert info.value.code == "VALIDATION_ERROR"
    assert info.value.details["fields"] == {
        "podi.taskId": ["No value for the placeholder {{podi.taskId}}."]
    }


def test_unknown_placeholder_is_a_validation_error_naming_it():
    with pytest.raises(AppError) as info:
        fill_template({"a": "{{known}}", "b": "x {{missing}} {{podi.nope}}"}, {"known": 1})
    assert info.value.code == "VALIDATION_ERROR"
    assert sorted(info.value.details["fields"]) == ["missing", "podi.nope"]
    assert "missing" in info.value.message


def test_the_definition_is_not_mutated():
    definition = {"a": ["{{o}}"]}
    values = {"o": {"k": [1]}}
    filled = fill_template(definition, values)
    filled["a"][0]["k"].append(2)
    assert definition == {"a": ["{{o}}"]}
    assert values == {"o": {"k": [1]}}


def test_placeholders_in_finds_values_only():
    definition = {"{{key}}": ["{{a}}", {"b": "x {{b}} {{ podi.taskId }}"}], "c": 1}
    assert placeholders_in(definition) == {"a", "b", "podi.taskId"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(value=json_values, text=st.text())
def test_any_value_lands_exactly_where_the_placeholder_was(value, text):
    definition = {"node": {"whole": "{{v}}", "part": "<{{t}}>", "fixed": "{{t}}"}}
    filled = fill_template(definition, {"v": value, "t": text})
    assert set(filled) == {"node"}
    assert set(filled["node"]) == {"whole", "part", "fixed"}
    assert filled["node"]["whole"] == value
    assert filled["node"]["part"] == f"<{text}>"
    assert filled["node"]["fixed"] == text
    assert json.loads(json.dumps(filled)) == filled
