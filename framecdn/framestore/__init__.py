"""The contract shared by ingest and origin: how an instance lives in the bucket."""
