"""Ways in for a PACS or a modality that pushes: the DICOM C-STORE receiver.

``framecdn receive`` answers a sender only once an instance is committed in the bucket
(its ``index.json`` written), through the same ingest pipeline as ``framecdn ingest``.
It uses ingest and the contract package; the origin never sees it.
"""
