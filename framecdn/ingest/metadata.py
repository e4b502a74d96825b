"""The instance's DICOM JSON as stored in the bucket (PS3.18 Annex F).

Pixel Data is replaced by a BulkDataURI relative to the DICOMweb root; the origin
makes it absolute for the host a client reached. (0002,0010) Transfer Syntax UID
names the syntax the *frame objects* hold, so Cornerstone can decode single-part
frames, and NumberOfFrames is always present.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom import Dataset
from pydicom.tag import Tag

from framecdn.framestore.keys import InstanceKey

PIXEL_DATA = "7FE00010"
TRANSFER_SYNTAX_UID = "00020010"
NUMBER_OF_FRAMES = "00280008"
AVAILABLE_TRANSFER_SYNTAX_UID = "00083002"
#: Elements that describe how the *source file* was encoded, which the frames no longer are.
_DROPPED = {"7FE00001", "7FE00002", "7FE00008", "7FE00009"}  # offset tables, float pixel data


def bulk_data_path(key: InstanceKey, number_of_frames: int) -> str:
    """Root-relative URL that retrieves every frame of the instance (its whole Pixel Data)."""
    frames = ",".join(str(n) for n in range(1, number_of_frames + 1))
    return f"studies/{key.study}/series/{key.series}/instances/{key.instance}/frames/{frames}"


def instance_json(
    dataset: Dataset,
    *,
    key: InstanceKey,
    transfer_syntax_uid: str,
    number_of_frames: int,
) -> dict[str, Any]:
    """DICOM JSON object of the instance, with Pixel Data as a BulkDataURI.

    A metadata-only instance (``number_of_frames`` 0: an SR, KO, RT Plan) gets no
    Pixel Data and no NumberOfFrames.
    """
    body = dataset.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)
    for tag in list(body):
        if tag in _DROPPED or tag.startswith("0002"):
            del body[tag]
    body[TRANSFER_SYNTAX_UID] = {"vr": "UI", "Value": [transfer_syntax_uid]}
    body[AVAILABLE_TRANSFER_SYNTAX_UID] = {"vr": "UI", "Value": [transfer_syntax_uid]}
    if number_of_frames:
        bits_allocated = int(dataset.get("BitsAllocated", 8) or 8)
        encapsulated = transfer_syntax_uid not in ("1.2.840.10008.1.2.1",)
        body[PIXEL_DATA] = {
            "vr": "OB" if encapsulated or bits_allocated <= 8 else "OW",
            "BulkDataURI": bulk_data_path(key, number_of_frames),
        }
        body[NUMBER_OF_FRAMES] = {"vr": "IS", "Value": [number_of_frames]}
    return dict(sorted(body.items(), key=lambda item: Tag(item[0])))


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
