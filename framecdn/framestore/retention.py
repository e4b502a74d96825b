"""Retention tag shared by ingest (writes it) and eviction (filters on it).

Every object framecdn writes carries ``framecdn-retention=cache``; the
lifecycle expiry rule only matches that tag, so re-tagging an object as
``pinned`` takes it out of expiry without touching the rule.
"""

RETENTION_TAG = "framecdn-retention"
CACHE = "cache"
PINNED = "pinned"


def tagging(value: str = CACHE) -> str:
    """URL-encoded form for the ``Tagging=`` argument of PutObject / uploads."""
    return f"{RETENTION_TAG}={value}"


def tag_set(value: str = CACHE) -> list[dict[str, str]]:
    """TagSet form for PutObjectTagging."""
    return [{"Key": RETENTION_TAG, "Value": value}]
