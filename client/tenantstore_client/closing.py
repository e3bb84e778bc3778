"""`with` and `async with` for the stores: the pool (or the SDK's sessions) closed at the end."""
from __future__ import annotations

from typing import Any, Self


class ClosedOnExit:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exception: Any) -> None:
        self.close()


class AsyncClosedOnExit:
    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exception: Any) -> None:
        await self.close()
