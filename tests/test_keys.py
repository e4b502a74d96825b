"""Keys are built and read back only by framestore.keys: instance objects and access markers."""

from __future__ import annotations

import pytest

from framecdn.errors import ConfigError, UsageError
from framecdn.framestore.keys import (
    InstanceKey,
    InvalidPrefix,
    InvalidUID,
    KeyLayout,
    ParsedKey,
    is_index_key,
    parse_object_key,
)

KEY = InstanceKey("1.2.3", "1.2.3.4", "1.2.3.4.5")


@pytest.mark.parametrize("prefix", ["", "clinic-a", "clinic-b/site-1"])
def test_every_instance_key_reads_back_under_any_prefix(prefix):
    layout = KeyLayout(prefix)
    assert parse_object_key(layout.frame(KEY, 12)) == ParsedKey(layout.prefix, KEY, "frame", 12)
    assert parse_object_key(layout.metadata(KEY)) == ParsedKey(layout.prefix, KEY, "metadata")
    assert parse_object_key(layout.index(KEY)) == ParsedKey(layout.prefix, KEY, "index")
    assert is_index_key(layout.index(KEY)) and not is_index_key(layout.frame(KEY, 1))


@pytest.mark.parametrize(
    "key",
    [
        "studies/1.2/series/1.3/instances/1.4/frames/0",
        "studies/1.2/series/1.3/instances/1.4/frames/x",
        "studies/1.2/series/1.3/instances/1.4/notes.txt",
        "studies/1.2/series/1.3/instances/1.4/index.json/extra",
        "access/studies/1.2",
        "a/../studies/1.2/series/1.3/instances/1.4/metadata",
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
