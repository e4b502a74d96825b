"""The C-STORE SCP: each dataset is spooled to disk, ingested, and only then answered.

pynetdicom runs every association in a thread of its own and calls :meth:`StoreSCP.on_store`
there once a dataset has arrived whole in a spool file; the response waits for the
ingest, so the sender hears success only for an instance whose ``index.json`` is in the
bucket, and a failure status (it retries) otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from framecdn.errors import Cancelled, ConfigError
from framecdn.framestore.config import ReceiveSettings
from framecdn.framestore.transfer_syntax import ENCAPSULATED_MEDIA_TYPES, NATIVE_SYNTAXES
from framecdn.ingest.pipeline import Ingestor, IngestResult
from framecdn.receive import status
from framecdn.receive.callers import Callers
from framecdn.receive.metrics import ReceiveMetrics
from framecdn.receive.spool import Spool

log = logging.getLogger("framecdn.receive")

#: Every transfer syntax the splitter stores (deflated is inflated, the others kept).
ACCEPTED_SYNTAXES = sorted(NATIVE_SYNTAXES | set(ENCAPSULATED_MEDIA_TYPES))

# Documented pynetdicom switch: write each received dataset to a file as it arrives.
_config.STORE_RECV_CHUNKED_DATASET = True

_OUTCOMES = {"ingested": "stored", "metadata-only": "stored", "skipped": "duplicate"}


class StoreSCP:
    """A DICOM Storage SCP (and Verification, for C-ECHO) in front of the ingestors.

    ``ingestors`` holds one :class:`Ingestor` per key prefix that ``callers`` writes to.
    """

    def __init__(
        self,
        settings: ReceiveSettings,
        callers: Callers,
        ingestors: Mapping[str, Ingestor],
        spool: Spool,
        metrics: ReceiveMetrics,
    ) -> None:
        self.settings = settings
        self.callers = callers
        self.ingestors = ingestors
        self.spool = spool
        self.metrics = metrics
        self._server: ThreadedAssociationServer | None = None
        self._stopped = threading.Event()
        self.ae = self._application_entity()

    def _application_entity(self) -> AE:
        settings = self.settings
        ae = AE(ae_title=settings.receive_ae_title)
        ae.maximum_pdu_size = settings.receive_max_pdu
        ae.maximum_associations = settings.receive_max_associations
        ae.acse_timeout = settings.receive_timeout
        ae.dimse_timeout = settings.receive_timeout
        ae.network_timeout = settings.receive_timeout
        ae.require_called_aet = True
        ae.require_calling_aet = self.callers.titles
        for context in StoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ACCEPTED_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    # Running -------------------------------------------------------------------------
    def start(self) -> None:
        """Listen (in background threads) on the configured address and port."""
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_RELEASED, self._ended("released")),
            (evt.EVT_ABORTED, self._ended("aborted")),
            (evt.EVT_REJECTED, self._ended("rejected")),
        ]
        address = (self.settings.receive_host, self.settings.receive_port)
        try:
            self._server = self.ae.start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {address[0]}:{address[1]} (FRAMECDN_RECEIVE_HOST, "
                f"FRAMECDN_RECEIVE_PORT): {exc.strerror or exc}"
            ) from exc
        self._sweeper = threading.Thread(
            target=self._sweep_forever, name="framecdn-spool-sweep", daemon=True
        )
        self._sweeper.start()

    @property
    def port(self) -> int:
        """The port listened on (the configured one)."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop listening; ingests in progress are cancelled (each removes what it wrote,
        and its sender hears a failure) and open associations aborted."""
        self._stopped.set()
        for ingestor in self.ingestors.values():
            ingestor.cancel()
        if self._server is not None:
            self._server.shutdown()
        self.ae.shutdown()

    def _sweep_forever(self) -> None:
        interval = max(1.0, min(30.0, self.spool.stale_after / 2))
        while not self._stopped.wait(interval):
            swept = self.spool.sweep()
            if swept:
                log.warning("spool: removed %d file(s) of aborted transfers", swept)
                self.metrics.spool_swept.inc(swept)

    # Handlers (called in the association's thread) -----------------------------------
    def on_echo(self, event: evt.Event) -> int:
        return status.SUCCESS

    def on_store(self, event: evt.Event) -> Dataset:
        caller = str(event.assoc.requestor.ae_title).strip()
        request = cast(C_STORE, event.request)
        announced = (str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID))
        prefix = self.callers.prefix_for(caller)
        if prefix is None:  # refused at association already; a second line of defence
            return self._answer(caller, announced[1], "refused", status.response(0x0124))
        path = Path(event.dataset_path)
        self.metrics.in_flight.inc()
        try:
            with self.spool.reading(path):
                refused = _contradiction(path, *announced)
                if refused is not None:
                    return self._answer(caller, announced[1], "refused", refused)
                result = self._ingest(self.ingestors[prefix], path, caller, announced[1])
        finally:
            self.metrics.in_flight.dec()
        outcome = _OUTCOMES.get(result.status) or (
            "store_failed" if result.retryable else "refused"
        )
        if outcome == "stored":
            self.metrics.bytes.inc(path.stat().st_size if path.exists() else 0)
        return self._answer(
            caller,
            announced[1],
            outcome,
            status.response(status.status_of(result), result.reason),
            result,
        )

    def _ingest(self, ingestor: Ingestor, path: Path, caller: str, sop: str) -> IngestResult:
        try:
            return ingestor.ingest(path, name=f"C-STORE from {caller} {sop}")
        except Cancelled:
            return IngestResult(
                str(path), "failed", reason="the receiver is stopping", retryable=True
            )

    def _answer(
        self,
        caller: str,
        sop: str,
        outcome: str,
        response: Dataset,
        result: IngestResult | None = None,
    ) -> Dataset:
        self.metrics.instances.labels(outcome).inc()
        line = "C-STORE from %s: %s %s (status 0x%04X%s)"
        reason = f": {response.ErrorComment}" if "ErrorComment" in response else ""
        if result is not None and result.reason:
            reason = f": {result.reason}"
        level = logging.INFO if response.Status == status.SUCCESS else logging.WARNING
        log.log(level, line, caller, sop, outcome, response.Status, reason)
        return response

    def _ended(self, how: str) -> Any:
        def count(event: evt.Event) -> None:
            self.metrics.associations.labels(how).inc()

        return count


def _contradiction(path: Path, sop_class: str, sop_instance: str) -> Dataset | None:
    """A refusal when the dataset is not the instance the request announced."""
    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
    except Exception as exc:  # noqa: BLE001 — pydicom on the sender's bytes; ingest says why
        log.debug("pre-check of %s failed: %s", path, exc)
        return None
    found_class = str(ds.get("SOPClassUID", ""))
    found_instance = str(ds.get("SOPInstanceUID", ""))
    if found_class and found_class != sop_class:
        return status.response(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOP Class UID {found_class} is not the announced {sop_class}",
        )
    if found_instance != sop_instance:
        return status.response(
            status.INVALID_SOP_INSTANCE,
            f"SOP Instance UID {found_instance or '(none)'} is not the announced one",
        )
    return None
