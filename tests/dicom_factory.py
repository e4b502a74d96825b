"""Small DICOM instances with chosen patient, study and series attributes (for searches).

Each is a native tomosynthesis instance from :mod:`framecdn.synthetic` (a few tiny
frames) whose attributes are then set with pydicom, so tests can build studies with the
names, dates and modalities a search is to tell apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from framecdn.synthetic import write_tomosynthesis


def small_instance(
    path: Path,
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    frames: int = 2,
    rows: int = 16,
    columns: int = 12,
    seed: int = 0,
    **attributes: Any,
) -> Path:
    """Write an instance at ``path`` with the given UIDs and attributes (pydicom keywords)."""
    sop = sop or generate_uid()
    write_tomosynthesis(
        path, frames=frames, rows=rows, columns=columns, seed=seed,
        study_uid=study or generate_uid(), series_uid=series or generate_uid(), sop_uid=sop,
    )
    if attributes:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return path
