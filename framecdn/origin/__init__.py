"""The read side: a Starlette app serving DICOMweb frames and metadata from the bucket.

It uses only :mod:`framecdn.framestore` (never :mod:`framecdn.ingest`).
"""
