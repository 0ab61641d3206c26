"""Stages report progress through this tiny protocol; the CLI plugs in rich bars, DAGs log lines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol


class Progress(Protocol):
    def start(self, total: int, description: str) -> None: ...
    def advance(self, n: int = 1) -> None: ...


class NullProgress:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class StageResult:
    """What a stage did: counts (this run), a few error messages, and stage-specific extras."""

    stage: str
    total: int = 0
    ok: int = 0
    error: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def add_error(self, item: str, message: str) -> None:
        self.error += 1
        if len(self.errors) < 20:
            self.errors.append(f"{item}: {message}")

    def count(self, row: dict, key: str = "clip_id") -> None:
        """Count one output row of the stage: ok, or an error with the row's message."""
        if row["status"] == "ok":
            self.ok += 1
        else:
            self.add_error(row[key], row["error"])

    def done(self) -> StageResult:
        self.seconds = time.perf_counter() - self._t0
        return self

    @property
    def failed_entirely(self) -> bool:
        """Nothing succeeded although there was work: the CLI exits non-zero only then."""
        return self.total > 0 and self.ok == 0 and self.error > 0

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "total": self.total, "ok": self.ok, "error": self.error,
                "skipped": self.skipped, "seconds": round(self.seconds, 3), "errors": self.errors, **self.extra}
