"""Bucket maintenance: what is stored, when it goes, and making it go.

The bucket is a cache that ingest fills; this package empties and accounts for it.
It works on a :class:`~framecdn.framestore.bucket.Bucket` and the key layout only:
it imports :mod:`framecdn.framestore` and nothing of ingest or origin. Text for
people is written by the CLI (``framecdn.cli``), not here.

- ``inventory`` — one listing turned into prefix / study / instance groups, with
  each instance's retention tag and expected frame count.
- ``lifecycle`` — the expiry rules framecdn installs: build, merge, apply, remove.
- ``expiry`` — when those rules delete a given object (the forecast of ``stats``).
- ``pinning`` — retag a study or series out of (or back into) expiry.
- ``eviction`` — erase a study, series or instance now, index first.
- ``sweeper`` — evict the least recently read studies under a byte budget.
- ``stats`` — the numbers ``framecdn stats`` prints.
"""
