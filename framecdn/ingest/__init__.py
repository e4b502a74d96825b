"""Write side: turn DICOM instances into frame objects in the bucket.

``splitter`` reads a Part 10 file into frames with bounded memory, ``metadata``
builds the instance's DICOM JSON, ``pipeline`` uploads frames, metadata and the
index (last) through a :class:`~framecdn.framestore.bucket.Bucket`. Taking objects
away again (lifecycle, pinning, eviction, sweeping, stats) is bucket maintenance:
:mod:`framecdn.maintenance`, which ingest does not import.
"""
