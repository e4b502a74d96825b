"""The C-STORE response for each outcome (PS3.4 Table B.2-1, PS3.7 Annex C).

A sender retries on a failure and forgets the instance on success, so success is
said only for an instance whose ``index.json`` is in the bucket.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from framecdn.ingest.pipeline import IngestResult

SUCCESS = 0x0000
#: The store is down or refused: nothing of the instance is visible; send it again.
OUT_OF_RESOURCES = 0xA700
#: The dataset's SOP Class UID is not the one the request announced.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: The dataset's SOP Instance UID is not the one the request announced.
INVALID_SOP_INSTANCE = 0x0117
#: A file the splitter refuses (corrupt, unsupported): sending it again will not help.
CANNOT_UNDERSTAND = 0xC000

#: Error Comment (0000,0902) is an LO: 64 characters at most.
_COMMENT_LENGTH = 64

_STORED = ("ingested", "metadata-only", "skipped")


def response(status: int, comment: str = "") -> Dataset:
    """The status dataset pynetdicom sends, with the one-line reason if any."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = _printable(comment)[:_COMMENT_LENGTH]
    return ds


def status_of(result: IngestResult) -> int:
    """Success only for a committed instance (or one already stored, byte for byte)."""
    if result.status in _STORED:
        return SUCCESS
    return OUT_OF_RESOURCES if result.retryable else CANNOT_UNDERSTAND


def _printable(text: str) -> str:
    """LO allows no backslash nor control characters; reasons can quote file bytes."""
    return "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text)
