"""Where instances come from: one ``Source`` protocol for Orthanc, DICOMweb and files.

The sources are real (an Orthanc, files on disk); the fill takes any of them; and no
module reaches another through ``importlib`` (an import mypy and the architecture test
cannot see), except the CLI's list of its own subcommands.
"""

from __future__ import annotations

import ast
import io
import uuid
from pathlib import Path

import pytest

from framecdn.framestore.config import Settings
from framecdn.framestore.keys import InstanceKey
from framecdn.ingest.fill import Filler
from framecdn.ingest.orthanc import OrthancClient, OrthancSource
from framecdn.ingest.references import SourceFiles, SourceInstances
from framecdn.ingest.sources import InstanceGone, Source
from framecdn.ingest.splitter import InflateLimits
from framecdn.synthetic import GeneratedInstance, write_tomosynthesis

PACKAGE = Path(__file__).parent.parent / "framecdn"
LIMITS = InflateLimits(max_ratio=200, max_bytes=1 << 30)


def instance(tmp_path: Path, seed: int) -> GeneratedInstance:
    return write_tomosynthesis(tmp_path / f"s{seed}.dcm", frames=2, rows=16, columns=16, seed=seed)


def key_of(inst: GeneratedInstance) -> InstanceKey:
    return InstanceKey(inst.study_uid, inst.series_uid, inst.sop_uid)


def unknown_key() -> InstanceKey:
    return InstanceKey("1.2.3", "1.2.3.4", f"2.25.{uuid.uuid4().int}")


def download(source: Source, key: InstanceKey) -> bytes:
    out = io.BytesIO()
    size = source.download(key, out)
    assert size == len(out.getvalue())
    return out.getvalue()


def test_an_orthanc_is_a_source(orthanc, tmp_path) -> None:
    inst = instance(tmp_path, 1)
    orthanc.upload(inst.path)
    client = OrthancClient(orthanc.url, username=orthanc.username, password=orthanc.password)
    with client:
        source = OrthancSource(client)
        assert download(source, key_of(inst)) == inst.path.read_bytes()
        with pytest.raises(InstanceGone):
            download(source, unknown_key())


def test_files_are_a_source(tmp_path) -> None:
    inst = instance(tmp_path, 2)
    files = SourceFiles([str(tmp_path)], LIMITS)
    assert download(files, key_of(inst)) == inst.path.read_bytes()
    with pytest.raises(InstanceGone):
        download(files, unknown_key())


def test_verify_compares_with_any_source(tmp_path) -> None:
    inst = instance(tmp_path, 3)
    spool = tmp_path / "spool"
    spool.mkdir()
    through = SourceInstances(SourceFiles([str(inst.path)], LIMITS), spool, LIMITS)
    direct = SourceFiles([str(inst.path)], LIMITS)
    frames = through.frames(key_of(inst))
    assert frames is not None and len(frames) == 2
    assert frames == direct.frames(key_of(inst))
    assert through.frames(unknown_key()) is None


def test_the_fill_takes_any_source(settings: Settings, s3_client, tmp_path) -> None:
    inst = instance(tmp_path, 4)
    with Filler(settings, source=SourceFiles([str(inst.path)], LIMITS)) as filler:
        assert filler.fill(key_of(inst)) == "ingested"
        assert filler.fill(unknown_key()) == "failed"


def test_no_module_reaches_another_through_importlib() -> None:
    reaching = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and called.attr == "import_module":
                reaching.append(str(path.relative_to(PACKAGE)))
    assert reaching == ["cli/__init__.py"]  # the subcommands, listed by name there
