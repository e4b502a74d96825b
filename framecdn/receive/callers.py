"""Which calling AE titles may send, and where each one's instances go."""

from __future__ import annotations

from dataclasses import dataclass

from framecdn.framestore.config import AccessSettings, ReceiveSettings, StorageSettings
from framecdn.framestore.keys import normalize_prefix


@dataclass(frozen=True)
class Callers:
    """The accepted calling AE titles, each with its key prefix.

    With none configured every caller is accepted and writes under ``FRAMECDN_PREFIX``
    (Orthanc's default too); a title listed as ``AE=site`` writes under that site's prefix,
    so several clinics can send into one bucket without reaching each other's studies.
    """

    prefixes: dict[str, str]
    default_prefix: str

    @classmethod
    def of(
        cls, storage: StorageSettings, access: AccessSettings, receive: ReceiveSettings
    ) -> Callers:
        base = normalize_prefix(storage.prefix)
        sites = {site.name: site.prefix_under(storage.prefix) for site in access.sites}
        prefixes = {}
        for entry in receive.receive_calling_aes:
            title, _, site = (part.strip() for part in entry.partition("="))
            prefixes[title] = sites[site] if site else base
        return cls(prefixes, base)

    @property
    def open(self) -> bool:
        """True when any calling AE title is accepted."""
        return not self.prefixes

    @property
    def titles(self) -> list[str]:
        return list(self.prefixes)

    def prefix_for(self, calling_ae_title: str) -> str | None:
        """The key prefix ``calling_ae_title`` writes to; None when it may not send."""
        if self.open:
            return self.default_prefix
        return self.prefixes.get(calling_ae_title.strip())

    def all_prefixes(self) -> set[str]:
        return set(self.prefixes.values()) or {self.default_prefix}
