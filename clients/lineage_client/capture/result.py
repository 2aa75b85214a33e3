"""What ``capture_command`` reports of a traced command."""

from __future__ import annotations

from dataclasses import dataclass

from lineage_core.models import Access, SourceFile

__all__ = ["CapturedRun"]


@dataclass(frozen=True, slots=True)
class CapturedRun:
    """What a traced command did.

    ``exit_code`` follows the shell: the command's exit status, or 128+N when signal N
    ended it (``killed_by`` is then N), 127 when the command was not found and 126 when
    it could not be executed — so ``lineage run`` can exit with it unchanged.
    """

    exit_code: int
    interrupted: bool
    accesses: tuple[Access, ...]
    sources: tuple[SourceFile, ...]
    warnings: tuple[str, ...]
    method: str
    started_at: int
    ended_at: int
    killed_by: int = 0
    # Why the record misses file accesses; empty: every process was traced (complete).
    capture_reasons: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every process of the command was traced."""
        return not self.capture_reasons
