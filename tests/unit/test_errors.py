import msgspec
import pytest

from atas.common.errors import ApiError, decode_json


class Item(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    count: int = 0


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    items: list[Item]


def test_wrong_type_names_the_field_path():
    with pytest.raises(ApiError) as info:
        decode_json(b'{"items": [{"name": "a"}, {"name": "b", "count": "x"}]}', Batch)
    assert info.value.status == 422
    assert info.value.field == "items[1].count"


def test_unknown_field_is_rejected():
    with pytest.raises(ApiError) as info:
        decode_json(b'{"items": [], "extra": 1}', Batch)
    assert info.value.status == 422 and "extra" in info.value.message


def test_malformed_json_is_400():
    with pytest.raises(ApiError) as info:
        decode_json(b'{"items": [', Batch)
    assert info.value.status == 400 and info.value.code == "malformed_json"


def test_missing_required_field_is_named():
    with pytest.raises(ApiError) as info:
        decode_json(b'{"items": [{"count": 1}]}', Batch)
    assert info.value.field == "items[0].name"
    with pytest.raises(ApiError) as info:
        decode_json(b'{}', Batch)
    assert info.value.field == "items"
