"""ccmb.safejson.loads_bounded: size and depth limits become ValueError, never RecursionError."""
import json

import pytest

from ccmb.safejson import loads_bounded, nesting_depth


def test_parses_ordinary_json():
    assert loads_bounded('{"url": "http://x/a.jpg", "caption": "[{猫}]"}') == {
        "url": "http://x/a.jpg", "caption": "[{猫}]"}


def test_deep_nesting_is_a_value_error_not_recursion_error():
    line = "[" * 1000 + "]" * 1000  # 2 KB: json.loads raises RecursionError on this
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        loads_bounded(line)


def test_depth_limit_is_exact():
    assert loads_bounded("[" * 64 + "]" * 64) is not None
    with pytest.raises(ValueError, match="nested deeper than 64"):
        loads_bounded("[" * 65 + "]" * 65)
    assert loads_bounded('{"a": [[1]]}', max_depth=3) == {"a": [[1]]}
    with pytest.raises(ValueError, match="nested deeper than 2 levels"):
        loads_bounded('{"a": [[1]]}', max_depth=2)


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"caption": "[" * 500 + '\\"' + "{" * 500})
    assert nesting_depth(text) == 1
    assert loads_bounded(text)["caption"].startswith("[[[")


def test_size_limit_counts_utf8_bytes():
    with pytest.raises(ValueError, match="line longer than 100 bytes"):
        loads_bounded(json.dumps("猫" * 40, ensure_ascii=False), max_bytes=100)  # 40 chars, 122 bytes
    assert loads_bounded(json.dumps("猫" * 30, ensure_ascii=False), max_bytes=100) == "猫" * 30


def test_bytes_input_and_invalid_json():
    assert loads_bounded(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        loads_bounded('{"a": ')
