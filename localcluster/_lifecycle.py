"""The one shape every part of the local cluster shares: start(), stop(), and ``with``."""

from __future__ import annotations

from typing import Self


class Service:
    """Something that runs between start() and stop(); ``with`` starts it and always stops it."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
