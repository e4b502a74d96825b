"""``framecdn verify``: does the bucket hold what its indexes say, and what is left over?

For every instance under a study (or the whole prefix) it re-reads the index and checks
the generation the index names: every frame is there, of the indexed size, and (read
back in chunks, never whole) of the indexed SHA-256; the metadata likewise. Given a
:class:`Reference` (the source file, the upstream) it also checks the indexed frames
against the true ones. It lists what no index accounts for: instances without an index
(a failed ingest, a half-done eviction), generations the index does not name (a
replacement that died, an old version left behind). Those younger than a grace period
may be an ingest still running: they are *pending*, not damage.

:func:`repair` then fixes what was found: a damaged instance is ingested again when the
reference can give its source (``reingest``, wired by the CLI: maintenance never imports
ingest), else removed, index first, so it is absent rather than wrong; orphans and
unnamed generations older than the grace are deleted.

It runs on a live bucket without locks: it only reads, and before deleting anything it
reads the index again. An instance whose index changed since it was checked (a
replacement committed meanwhile) is left alone; a generation the index names now is
never deleted; objects younger than the grace are never deleted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from framecdn.errors import FramecdnError, ObjectMissing, StoreError
from framecdn.framestore.bucket import Bucket, StoredObject
from framecdn.framestore.index import FrameEntry, InstanceIndex, InvalidIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout
from framecdn.framestore.part10 import InvalidPart10, Part10
from framecdn.maintenance.eviction import evict_objects
from framecdn.maintenance.inventory import (
    GenerationInventory,
    InstanceInventory,
    PrefixInventory,
    group_by_prefix,
    read_all_details,
)
from framecdn.maintenance.leftovers import remove_leftovers
from framecdn.maintenance.sweeper import ORPHAN_GRACE

Kind = Literal[
    "missing-frame",
    "frame-size",
    "frame-checksum",
    "missing-metadata",
    "metadata-mismatch",
    "invalid-index",
    "source-mismatch",
    "part10-invalid",
    "orphan",
    "old-generation",
    "unreadable",
]
#: Findings that make an instance wrong as served: repaired by re-ingest or removal.
DAMAGE: frozenset[Kind] = frozenset(
    {
        "missing-frame",
        "frame-size",
        "frame-checksum",
        "missing-metadata",
        "metadata-mismatch",
        "invalid-index",
        "source-mismatch",
        # Retrieval would rebuild the file from metadata and frames, never serve it
        # wrong, but it is no longer the ingested file: ingest again.
        "part10-invalid",
    }
)
#: Findings about objects no index serves: repaired by deleting them.
LEFTOVER: frozenset[Kind] = frozenset({"orphan", "old-generation"})
READ_CHUNK = 1 << 20


class Reference(Protocol):
    """Where the true frames of an instance come from: its source file, the upstream."""

    def frames(self, key: InstanceKey) -> list[FrameEntry] | None:
        """Each true frame's size and SHA-256, in order; None if this reference lacks it."""


class NoSource(FramecdnError):
    """Raised by a :data:`Reingest` that has no source for the instance asked for."""


#: Ingest the instance again from its source: None when done, else why it failed
#: (raises :class:`NoSource` when it has no source for it).
Reingest = Callable[[InstanceKey], str | None]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong (or left over) with one instance."""

    kind: Kind
    instance: InstanceKey
    detail: str
    generation: str | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """Objects no index names yet, younger than the grace: maybe an ingest running."""

    instance: InstanceKey
    generation: str | None
    written: datetime


@dataclass(slots=True)
class Repair:
    """What :func:`repair` did about one instance."""

    instance: InstanceKey
    action: Literal["reingested", "removed", "leftovers-removed", "skipped", "failed"]
    detail: str


@dataclass(slots=True)
class VerifyReport:
    """What one ``verify`` run found (and, after :func:`repair`, did)."""

    instances: int = 0  # committed instances checked
    frames: int = 0
    bytes_read: int = 0
    compared: int = 0  # instances checked against the reference
    schema_1: int = 0  # instances still in the layout before generations (served as is)
    #: Committed instances without a part10 object (ingested before it existed, or from
    #: a deflated or byte-swapped file): retrieved as a file rebuilt, not the original.
    without_part10: int = 0
    findings: list[Finding] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    repairs: list[Repair] = field(default_factory=list)
    #: The inventory the findings come from (kept for repair).
    inventory: PrefixInventory | None = field(default=None, repr=False)
    #: The index each checked instance had when it was checked (repair compares).
    checked: dict[InstanceKey, InstanceIndex] = field(default_factory=dict, repr=False)

    @property
    def damaged(self) -> list[InstanceKey]:
        """Instances with damage or leftovers, in order, each once."""
        return list(dict.fromkeys(f.instance for f in self.findings))

    @property
    def unrepaired(self) -> list[InstanceKey]:
        fixed = {
            r.instance for r in self.repairs if r.action not in ("skipped", "failed")
        }
        return [key for key in self.damaged if key not in fixed]

    @property
    def ok(self) -> bool:
        """Nothing wrong, or everything wrong repaired: the exit status."""
        return not self.unrepaired


# Checking -----------------------------------------------------------------------------


def verify(
    bucket: Bucket,
    layout: KeyLayout,
    *,
    study: str | None = None,
    reference: Reference | None = None,
    check_bytes: bool = True,
    grace: timedelta = ORPHAN_GRACE,
    now: datetime | None = None,
    workers: int = 4,
) -> VerifyReport:
    """Check one study (``study``) or every instance under the layout's prefix."""
    now = now or datetime.now(UTC)
    listed = bucket.list(layout.study_prefix(study) if study else layout.all_studies())
    inventory = group_by_prefix(listed).get(layout.prefix, PrefixInventory(layout))
    read_all_details(bucket, inventory, workers=workers)
    report = VerifyReport(inventory=inventory)
    instances = sorted(inventory.instances, key=lambda i: describe_key(i.key))

    def one(instance: InstanceInventory) -> Checked:
        return _check_instance(bucket, layout, instance, reference, check_bytes)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, instances))
    for instance, checked in zip(instances, results, strict=True):
        report.findings += checked.findings
        report.frames += checked.frames
        report.bytes_read += checked.bytes_read
        report.compared += checked.compared
        if instance.index is not None:
            report.instances += 1
            report.checked[instance.key] = instance.index
            report.schema_1 += instance.index.generation is None
            report.without_part10 += instance.index.part10 is None
        _sort_leftovers(instance, now - grace, report)
    return report


@dataclass(slots=True)
class Checked:
    """What checking one instance's committed generation gave."""

    findings: list[Finding] = field(default_factory=list)
    frames: int = 0
    bytes_read: int = 0
    compared: bool = False  # checked against the reference too


def _sort_leftovers(
    instance: InstanceInventory, older_than: datetime, report: VerifyReport
) -> None:
    """Unnamed generations: old ones are findings, young ones pending."""
    if instance.read_error is not None or instance.vanished:
        return
    if instance.index_object is not None and instance.index is None:
        return  # an invalid index: the instance is damaged; its objects go with it
    kind: Kind = "orphan" if instance.index_object is None else "old-generation"
    for generation in instance.leftovers:
        if generation.written >= older_than:
            report.pending.append(Pending(instance.key, generation.generation, generation.written))
            continue
        what = "no index names it" if kind == "orphan" else "not the generation the index names"
        report.findings.append(
            Finding(
                kind,
                instance.key,
                f"{_generation_name(generation.generation)}: {len(generation.objects)} objects, "
                f"{what}, last written {generation.written:%Y-%m-%d %H:%M} UTC",
                generation.generation,
            )
        )


def _check_instance(
    bucket: Bucket,
    layout: KeyLayout,
    instance: InstanceInventory,
    reference: Reference | None,
    check_bytes: bool,
) -> Checked:
    """The findings about the committed generation of one instance."""
    key = instance.key
    checked = Checked()
    if instance.read_error is not None:
        checked.findings.append(Finding("unreadable", key, instance.read_error))
        return checked
    if instance.vanished or instance.index_object is None:
        return checked  # removed meanwhile, or an orphan (see _sort_leftovers)
    index = instance.index
    if index is None:
        checked.findings.append(Finding("invalid-index", key, instance.invalid_index or "?"))
        return checked
    committed = instance.committed or GenerationInventory(index.generation)
    stored = {obj.key: obj for obj in committed.objects}
    checked.frames = index.number_of_frames
    for number in range(1, index.number_of_frames + 1):
        object_key = layout.frame_of(index, number)
        problem, read = _check_object(
            bucket, stored.get(object_key), object_key, index.frame(number), check_bytes
        )
        checked.bytes_read += read
        if problem is not None:
            kind, detail = problem
            finding = Finding(kind, key, f"frame {number}: {detail}", index.generation)
            checked.findings.append(finding)
    metadata_key = layout.metadata_of(index)
    metadata = FrameEntry(index.metadata_size, index.metadata_sha256)
    problem, read = _check_object(
        bucket, stored.get(metadata_key), metadata_key, metadata, check_bytes
    )
    checked.bytes_read += read
    if problem is not None:
        kind = "missing-metadata" if problem[0] == "missing-frame" else "metadata-mismatch"
        checked.findings.append(Finding(kind, key, f"metadata: {problem[1]}", index.generation))
    part10 = _check_part10(bucket, layout, index, stored, check_bytes)
    checked.findings += part10.findings
    checked.bytes_read += part10.bytes_read
    if reference is not None:
        truth = reference.frames(key)
        if truth is not None:
            checked.compared = True
            checked.findings += _compare(key, index, truth)
    return checked


def _check_part10(
    bucket: Bucket,
    layout: KeyLayout,
    index: InstanceIndex,
    stored: dict[str, StoredObject],
    check_bytes: bool,
) -> Checked:
    """The part10 object the index names: present, its size and SHA-256, and a format
    that stitches within the indexed frames."""
    checked = Checked()
    entry = index.part10
    if entry is None or index.generation is None:
        return checked
    object_key = layout.part10_of(index)
    problem, read = _check_object(bucket, stored.get(object_key), object_key, entry, check_bytes)
    checked.bytes_read = read
    if problem is None and check_bytes:
        try:
            parsed = Part10.from_bytes(bucket.get(object_key))
            parsed.check_frames([frame.size for frame in index.frames])
        except (InvalidPart10, ObjectMissing) as exc:
            problem = ("part10-invalid", str(exc))
    if problem is not None:
        detail = f"part10: {problem[1]}"
        checked.findings.append(Finding("part10-invalid", index.key, detail, index.generation))
    return checked


def _check_object(
    bucket: Bucket,
    listed: StoredObject | None,
    object_key: str,
    entry: FrameEntry,
    check_bytes: bool,
) -> tuple[tuple[Kind, str] | None, int]:
    """What is wrong with one object against its index entry (None: nothing), bytes read."""
    if listed is None:
        return ("missing-frame", "missing"), 0
    if listed.size != entry.size:
        return ("frame-size", f"{listed.size} bytes, the index says {entry.size}"), 0
    if not check_bytes:
        return None, 0
    digest = hashlib.sha256()
    read = 0
    try:
        for chunk in bucket.chunks(object_key, READ_CHUNK):
            digest.update(chunk)
            read += len(chunk)
    except ObjectMissing:
        return ("missing-frame", "missing (gone since the listing)"), read
    if read != entry.size:
        return ("frame-size", f"read {read} bytes, the index says {entry.size}"), read
    if digest.hexdigest() != entry.sha256:
        return ("frame-checksum", "SHA-256 differs from the index's"), read
    return None, read


def _compare(key: InstanceKey, index: InstanceIndex, truth: list[FrameEntry]) -> list[Finding]:
    """The indexed frames against the true ones (same sizes and SHA-256: same bytes)."""
    if len(truth) != index.number_of_frames:
        detail = f"the source has {len(truth)} frames, the index {index.number_of_frames}"
        return [Finding("source-mismatch", key, detail, index.generation)]
    return [
        Finding("source-mismatch", key, f"frame {n}: not the source's bytes", index.generation)
        for n, (stored, true) in enumerate(zip(index.frames, truth, strict=True), start=1)
        if stored != true
    ]


def _generation_name(generation: str | None) -> str:
    return "schema-1 objects" if generation is None else f"generation {generation}"


# Repairing ----------------------------------------------------------------------------


def repair(
    bucket: Bucket,
    layout: KeyLayout,
    report: VerifyReport,
    *,
    reingest: Reingest | None = None,
    grace: timedelta = ORPHAN_GRACE,
    now: datetime | None = None,
) -> VerifyReport:
    """Fix what ``report`` found; each instance's outcome goes into ``report.repairs``."""
    now = now or datetime.now(UTC)
    assert report.inventory is not None
    by_key = {instance.key: instance for instance in report.inventory.instances}
    for key in report.damaged:
        kinds = {f.kind for f in report.findings if f.instance == key}
        instance = by_key[key]
        if kinds & DAMAGE:
            checked = report.checked.get(key)
            fixed = _repair_damaged(bucket, layout, instance, checked, reingest, now - grace)
            report.repairs.append(fixed)
        elif kinds & LEFTOVER:
            report.repairs.append(_remove_old(bucket, layout, instance, now - grace))
        else:
            report.repairs.append(Repair(key, "skipped", "the store could not be read"))
    return report


def _repair_damaged(
    bucket: Bucket,
    layout: KeyLayout,
    instance: InstanceInventory,
    checked: InstanceIndex | None,
    reingest: Reingest | None,
    older_than: datetime,
) -> Repair:
    """Ingest it again from its source, or remove it (index first) so it is not served wrong."""
    key = instance.key
    try:
        now_raw = bucket.get_or_none(layout.index(key))
    except StoreError as exc:
        return Repair(key, "failed", str(exc))
    if not _unchanged(now_raw, checked):
        return Repair(key, "skipped", "its index changed since it was checked; verify again")
    if reingest is not None:
        try:
            failure = reingest(key)
        except NoSource:
            pass  # nothing to ingest it from: removed below
        else:
            if failure is None:
                return Repair(key, "reingested", "ingested again from its source")
            return Repair(key, "failed", f"ingesting it again failed: {failure}")
    # No source for it: removed, index first (the origin answers 404, or the upstream).
    doomed = [instance.index_object] if instance.index_object is not None else []
    named = checked.generation if checked is not None else None
    for generation in instance.generations.values():
        if generation.generation == named or generation.written < older_than:
            doomed += generation.objects  # a young unnamed one may be an ingest running
    try:
        evict_objects(bucket, {key: doomed})
    except StoreError as exc:
        return Repair(key, "failed", str(exc))
    return Repair(key, "removed", f"removed, index first ({len(doomed)} objects)")


def _unchanged(raw: bytes | None, checked: InstanceIndex | None) -> bool:
    """Whether the index read now is the one that was checked (or still invalid)."""
    if raw is None:
        return False
    try:
        current = InstanceIndex.from_json(raw)
    except InvalidIndex:
        return checked is None
    return checked is not None and current.identity == checked.identity


def _remove_old(
    bucket: Bucket, layout: KeyLayout, instance: InstanceInventory, older_than: datetime
) -> Repair:
    """Delete the orphans or unnamed generations older than the grace."""
    doomed = [g for g in instance.leftovers if g.written < older_than]
    try:
        removed = remove_leftovers(bucket, layout, instance, doomed)
    except StoreError as exc:
        return Repair(instance.key, "failed", str(exc))
    if not removed:
        return Repair(instance.key, "skipped", "its index changed since it was checked")
    names = ", ".join(_generation_name(g.generation) for g in removed)
    return Repair(instance.key, "leftovers-removed", f"removed {names}")


def describe_key(key: InstanceKey) -> str:
    """How a report names an instance: study/series/instance."""
    return f"{key.study}/{key.series}/{key.instance}"


def counts(findings: Iterable[Finding]) -> dict[Kind, int]:
    found: dict[Kind, int] = {}
    for finding in findings:
        found[finding.kind] = found.get(finding.kind, 0) + 1
    return found
