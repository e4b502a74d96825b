"""One error root: every exception class framecdn defines derives from FramecdnError.

The CLI catches FramecdnError once (one line, exit 1 or 2) and the origin turns a
:class:`~framecdn.errors.Refusal` into its answer; a class outside the tree would
escape both as a traceback or a 500.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import framecdn
from framecdn.errors import BackendError, Cancelled, FramecdnError, Refusal


def every_module() -> list[str]:
    """Every module of the package (importing each one, as the test below needs)."""
    names = [
        info.name
        for info in pkgutil.walk_packages(framecdn.__path__, prefix="framecdn.")
        if not info.name.endswith(".__main__")  # runs the CLI
    ]
    return ["framecdn", *names]


def exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in every_module():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == name:
                found[f"{name}.{value.__qualname__}"] = value
    return found


def test_every_exception_class_derives_from_framecdn_error() -> None:
    classes = exception_classes()
    assert len(classes) > 40  # the enumeration reaches every module
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, FramecdnError))
    assert outside == []


def test_one_class_for_each_kind_of_failure() -> None:
    classes = exception_classes()
    cancellations = [name for name, cls in classes.items() if "Cancel" in name]
    assert all(issubclass(classes[name], Cancelled) for name in cancellations)
    assert [name for name, cls in classes.items() if cls.__name__ == "DownloadCancelled"] == []
    for name in ("StoreError", "UpstreamError", "SourceError"):
        (cls,) = [cls for cls in classes.values() if cls.__name__ == name]
        assert issubclass(cls, BackendError), name


def test_a_refusal_carries_its_status_and_nothing_else_does() -> None:
    for name, cls in exception_classes().items():
        status = getattr(cls, "status", None)
        if issubclass(cls, Refusal):
            assert isinstance(status, int) and 400 <= status < 500, name
        assert not hasattr(cls, "status_code"), name


def test_value_errors_are_invalid_values() -> None:
    """A class is also a ValueError exactly when it says a value does not parse."""
    for name, cls in exception_classes().items():
        assert issubclass(cls, ValueError) == cls.__name__.startswith("Invalid"), name
