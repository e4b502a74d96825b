"""framecdn: a frame CDN origin for DICOMweb.

Three floors, arrows pointing down only:

- ``framecdn.framestore`` — the contract: object keys, the per-instance index,
  transfer syntaxes, S3 clients, presigning, configuration.
- ``framecdn.ingest`` (write side) and ``framecdn.origin`` (read side) — both use
  the framestore, neither imports the other.
- ``framecdn.cli`` and ``framecdn.embedded_s3`` — the face that wires them up.
"""

__version__ = "0.1.0"
