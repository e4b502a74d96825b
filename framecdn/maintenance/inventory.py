"""What framecdn has in the bucket: per prefix, per study, per instance.

One LIST pass gives every object's size and age. Two small reads per instance (the
index's tags and the index itself) say whether the instance is pinned and whether it
is complete: pinning retags a whole instance with its index last, so the index's tag
speaks for the instance.

An instance's frames and metadata are grouped by *generation* (one write of the
instance, ``framestore.keys``). The index names the committed one; any other is a
leftover: of a replacement that died before its swap, of an old version whose removal
failed, or of an ingest that failed or is still running (only age tells these apart:
:attr:`GenerationInventory.written`).

Only the store's own "no such key" means an object is gone. Any other failure to
read an instance's tags or index leaves its retention *unknown* (``read_error``);
unknown is never ``cache``, so the sweeper never evicts such a study.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from framecdn.errors import ObjectMissing, StoreError
from framecdn.framestore.bucket import Bucket, StoredObject
from framecdn.framestore.index import InstanceIndex, InvalidIndex
from framecdn.framestore.keys import InstanceKey, KeyLayout, ParsedKey, parse_object_key
from framecdn.framestore.retention import CACHE, PINNED

#: Stands for "no index, so no generation is named" (None is the schema-1 generation).
_NO_GENERATION = "-"


@dataclass(slots=True)
class GenerationInventory:
    """The frames and metadata of one generation (one write) of an instance."""

    generation: str | None  # None: the schema-1 layout, directly under the instance
    objects: list[StoredObject] = field(default_factory=list)
    frames: set[int] = field(default_factory=set)
    has_metadata: bool = False

    @property
    def bytes(self) -> int:
        return sum(obj.size for obj in self.objects)

    @property
    def written(self) -> datetime:
        """When its newest object was written (an ingest still running keeps it young)."""
        return max(obj.last_modified for obj in self.objects)


@dataclass(slots=True)
class InstanceInventory:
    """The objects of one instance as found in the bucket."""

    key: InstanceKey
    objects: list[StoredObject] = field(default_factory=list)
    generations: dict[str | None, GenerationInventory] = field(default_factory=dict)
    index_object: StoredObject | None = None
    retention: str | None = None  # our tag's value on the index (or first object)
    index: InstanceIndex | None = None  # the committed index, once read and valid
    invalid_index: str | None = None  # why index.json could not be understood
    read_error: str | None = None  # why its tags or index could not be read
    vanished: bool = False  # an object listed was gone when its details were read

    @property
    def bytes(self) -> int:
        return sum(obj.size for obj in self.objects)

    @property
    def expected_frames(self) -> int | None:
        """NumberOfFrames from index.json (None until it is read, or when unreadable)."""
        return None if self.index is None else self.index.number_of_frames

    @property
    def committed(self) -> GenerationInventory | None:
        """The generation the index names, when the index was read and it is stored."""
        if self.index is None:
            return None
        return self.generations.get(self.index.generation)

    @property
    def leftovers(self) -> list[GenerationInventory]:
        """Generations no index names. Unknown (empty) while an index is there unread."""
        if self.index_object is not None and self.index is None:
            return []
        named = self.index.generation if self.index is not None else _NO_GENERATION
        return [g for g in self.generations.values() if g.generation != named]

    @property
    def frames(self) -> set[int]:
        """The frame numbers stored for the committed generation."""
        committed = self.committed
        return set() if committed is None else committed.frames

    @property
    def has_metadata(self) -> bool:
        committed = self.committed
        return committed is not None and committed.has_metadata

    def drop_generation(self, generation: str | None) -> None:
        """Forget a generation just removed from the bucket."""
        gone = self.generations.pop(generation, None)
        if gone is not None:
            doomed = {obj.key for obj in gone.objects}
            self.objects = [obj for obj in self.objects if obj.key not in doomed]

    @property
    def written(self) -> datetime:
        """When ingest finished: the index is written last (else the newest object)."""
        if self.index_object is not None:
            return self.index_object.last_modified
        return max(obj.last_modified for obj in self.objects)

    @property
    def pinned(self) -> bool:
        return self.retention == PINNED

    @property
    def cached(self) -> bool:
        """Known to carry ``framecdn-retention=cache``: the only state a sweep may evict."""
        return self.retention == CACHE and self.read_error is None and not self.vanished

    @property
    def complete(self) -> bool | None:
        """True when the index, and the metadata and every frame of the generation it
        names, are there; None when not known (the index was not read, or is invalid)."""
        if self.index_object is None:
            return False
        if self.index is None:
            return None
        return self.has_metadata and self.frames == set(
            range(1, self.index.number_of_frames + 1)
        )


@dataclass(slots=True)
class StudyInventory:
    study: str
    instances: dict[InstanceKey, InstanceInventory] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(inst.bytes for inst in self.instances.values())

    @property
    def object_count(self) -> int:
        return sum(len(inst.objects) for inst in self.instances.values())

    @property
    def written(self) -> datetime:
        return max(inst.written for inst in self.instances.values())

    @property
    def pinned(self) -> bool:
        return any(inst.pinned for inst in self.instances.values())

    @property
    def pinned_bytes(self) -> int:
        return sum(inst.bytes for inst in self.instances.values() if inst.pinned)

    @property
    def cached(self) -> bool:
        """Every instance is known to be ``cache``-tagged (so the study may be evicted)."""
        return all(inst.cached for inst in self.instances.values())

    @property
    def read_error(self) -> str | None:
        """The first reason an instance's retention is unknown, if any."""
        return next((i.read_error for i in self.instances.values() if i.read_error), None)


@dataclass(slots=True)
class PrefixInventory:
    """Every framecdn object under one key prefix, grouped by study and instance."""

    layout: KeyLayout
    studies: dict[str, StudyInventory] = field(default_factory=dict)

    def add(self, parsed: ParsedKey, obj: StoredObject) -> None:
        key = parsed.instance
        study = self.studies.setdefault(key.study, StudyInventory(key.study))
        instance = study.instances.setdefault(key, InstanceInventory(key))
        instance.objects.append(obj)
        if parsed.part == "index":
            instance.index_object = obj
            return
        generation = instance.generations.setdefault(
            parsed.generation, GenerationInventory(parsed.generation)
        )
        generation.objects.append(obj)
        if parsed.frame is not None:
            generation.frames.add(parsed.frame)
        elif parsed.part == "metadata":
            generation.has_metadata = True

    def forget(self, keys: Iterable[InstanceKey]) -> None:
        """Drop instances (and studies left empty) that were just removed from the bucket."""
        for key in keys:
            study = self.studies.get(key.study)
            if study is None:
                continue
            study.instances.pop(key, None)
            if not study.instances:
                del self.studies[key.study]

    @property
    def instances(self) -> Iterator[InstanceInventory]:
        for study in self.studies.values():
            yield from study.instances.values()

    @property
    def bytes(self) -> int:
        return sum(study.bytes for study in self.studies.values())

    @property
    def object_count(self) -> int:
        return sum(study.object_count for study in self.studies.values())

    @property
    def unreadable(self) -> dict[str, str]:
        """Study UID -> why its retention is unknown, for every such study."""
        return {
            study.study: error
            for study in self.studies.values()
            if (error := study.read_error) is not None
        }


def group_by_prefix(objects: Iterable[StoredObject]) -> dict[str, PrefixInventory]:
    """Sort listed objects into per-prefix inventories; keys that are not ours are skipped."""
    found: dict[str, PrefixInventory] = {}
    for obj in objects:
        parsed = parse_object_key(obj.key)
        if parsed is None:
            continue
        inventory = found.get(parsed.prefix)
        if inventory is None:
            inventory = found[parsed.prefix] = PrefixInventory(KeyLayout(parsed.prefix))
        inventory.add(parsed, obj)
    return found


def read_details(bucket: Bucket, instance: InstanceInventory) -> None:
    """Fill in one instance's retention tag and (when indexed) its index."""
    probe = instance.index_object or min(instance.objects, key=lambda o: o.key)
    try:
        instance.retention = bucket.retention(probe.key)
        if instance.index_object is not None:
            raw = bucket.get(instance.index_object.key)
            try:
                instance.index = InstanceIndex.from_json(raw)
            except InvalidIndex as exc:
                instance.index = None
                instance.invalid_index = str(exc)
    except ObjectMissing:
        instance.vanished = True  # deleted since the listing (an eviction under way)
    except StoreError as exc:
        instance.read_error = str(exc)


def read_all_details(bucket: Bucket, inventory: PrefixInventory, *, workers: int = 8) -> None:
    """:func:`read_details` for every instance of the inventory, a few at a time."""
    instances = list(inventory.instances)
    if not instances:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(instances)))) as pool:
        list(pool.map(lambda instance: read_details(bucket, instance), instances))


def take_inventory(
    bucket: Bucket, layout: KeyLayout, *, details: bool = True, workers: int = 8
) -> PrefixInventory:
    """The inventory of one prefix (its ``studies/`` tree)."""
    grouped = group_by_prefix(bucket.list(layout.all_studies()))
    inventory = grouped.get(layout.prefix, PrefixInventory(layout))
    if details:
        read_all_details(bucket, inventory, workers=workers)
    return inventory


def take_bucket_inventory(
    bucket: Bucket, *, details: bool = True, workers: int = 8
) -> dict[str, PrefixInventory]:
    """Inventories of every framecdn prefix in the bucket (one LIST of the whole bucket)."""
    grouped = group_by_prefix(bucket.list(""))
    if details:
        for inventory in grouped.values():
            read_all_details(bucket, inventory, workers=workers)
    return grouped
