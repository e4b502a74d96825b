"""This origin's absolute URLs, as the client reached it (Host, scheme, ASGI root path)."""

from __future__ import annotations

from starlette.requests import Request

from framecdn.framestore.keys import InstanceKey


def normalise_root(root_path: str) -> str:
    """``/dicom-web/`` -> ``/dicom-web``; ``/`` or empty -> empty."""
    root = root_path.strip().strip("/")
    return f"/{root}" if root else ""


def dicomweb_root(request: Request, root: str, public_url: str | None = None) -> str:
    """``https://host[/asgi-root]/dicom-web/`` — ends with a slash, ready for joining.

    ``public_url`` (when configured) wins over the request's Host: some clients send
    a Host without the port (dicomweb-client does), and a proxy may rewrite it.
    """
    base = (public_url or str(request.base_url)).rstrip("/")
    return f"{base}{root}/"


def instance_url(root_url: str, key: InstanceKey) -> str:
    return f"{root_url}studies/{key.study}/series/{key.series}/instances/{key.instance}"


def frame_url(root_url: str, key: InstanceKey, number: int) -> str:
    return f"{instance_url(root_url, key)}/frames/{number}"
