"""Keys are built and read back only by framestore.keys: instance objects and access markers."""

from __future__ import annotations

import pytest

from framecdn.errors import ConfigError, UsageError
from framecdn.framestore.keys import (
    InstanceKey,
    InvalidGeneration,
    InvalidPrefix,
    InvalidUID,
    KeyLayout,
    ParsedKey,
    is_index_key,
    parse_object_key,
    validate_uid,
)

KEY = InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.5")
GEN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("prefix", ["", "clinic-a", "clinic-b/site-1"])
@pytest.mark.parametrize("generation", [GEN, None])
def test_every_instance_key_reads_back_under_any_prefix(prefix, generation):
    layout = KeyLayout(prefix)
    frame = layout.frame(KEY, 12, generation=generation)
    metadata = layout.metadata(KEY, generation=generation)
    assert parse_object_key(frame) == ParsedKey(layout.prefix, KEY, "frame", 12, generation)
    assert parse_object_key(metadata) == ParsedKey(layout.prefix, KEY, "metadata", None, generation)
    assert parse_object_key(layout.index(KEY)) == ParsedKey(layout.prefix, KEY, "index")
    assert is_index_key(layout.index(KEY)) and not is_index_key(frame)


def test_generations_sit_under_the_instance_and_the_index_names_them():
    layout = KeyLayout("p")
    assert layout.frame(KEY, 3, generation=GEN) == (
        f"p/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/{GEN}/frames/3"
    )
    assert layout.metadata(KEY, generation=GEN).endswith(f"/instances/1.2.3.4.5/{GEN}/metadata")
    # Schema-1 instances (no generation) keep their objects directly under the instance.
    assert layout.frame(KEY, 3, generation=None).endswith("/instances/1.2.3.4.5/frames/3")
    assert layout.generation_prefix(KEY, None) == layout.instance_prefix(KEY)


@pytest.mark.parametrize("generation", ["", "ABCDEF0123456789", "abc", "../../../x", GEN + "\n"])
def test_bad_generations_never_become_keys(generation):
    with pytest.raises(InvalidGeneration):
        KeyLayout().frame(KEY, 1, generation=generation)


@pytest.mark.parametrize("uid", ["1.2.3\n", "1.2.3\r", " 1.2.3", "1.2.3 "])
def test_uids_with_control_characters_or_spaces_are_refused(uid):
    with pytest.raises(InvalidUID):
        validate_uid(uid)


def test_a_prefix_with_a_newline_is_refused():
    with pytest.raises(InvalidPrefix):
        KeyLayout("clinic\n")


@pytest.mark.parametrize(
    "key",
    [
        "studies/1.2/series/1.3/instances/1.4/frames/0",
        "studies/1.2/series/1.3/instances/1.4/frames/x",
        "studies/1.2/series/1.3/instances/1.4/notes.txt",
        "studies/1.2/series/1.3/instances/1.4/index.json/extra",
        "access/studies/1.2",
        "a/../studies/1.2/series/1.3/instances/1.4/metadata",
        "studies/1.2/series/1.3/instances/1.4/metadata\n",
        f"studies/1.2/series/1.3/instances/1.4/{GEN}/index.json",
        "studies/1.2/series/1.3/instances/1.4/ABCDEF0123456789/frames/1",
        "studies/1.2/series/1.3/instances/1.4/0123/frames/1",
    ],
)
def test_other_keys_are_not_instance_objects(key):
    assert parse_object_key(key) is None and not is_index_key(key)


def test_access_markers_are_built_and_read_back_here():
    layout = KeyLayout("clinic")
    assert layout.access_prefix() == "clinic/access/studies/"
    assert layout.access_marker("1.2.3") == "clinic/access/studies/1.2.3"
    assert layout.parse_access_marker("clinic/access/studies/1.2.3") == "1.2.3"
    assert layout.parse_access_marker("clinic/access/studies/not-a-uid") is None
    assert layout.parse_access_marker("other/access/studies/1.2.3") is None
    with pytest.raises(InvalidUID):
        layout.access_marker("../1.2")


def test_bad_uids_and_prefixes_are_usage_errors():
    with pytest.raises(UsageError):
        KeyLayout().study_prefix("1.2/../3")
    with pytest.raises(ConfigError):
        KeyLayout("../up")
    assert issubclass(InvalidUID, ValueError) and issubclass(InvalidPrefix, ValueError)
