"""Batch-class work: in pieces, only while no online request is queued.

Requests larger than one piece (or than max_batch_size) are split and the dispatcher
reassembles the parts in order. Two ways to keep pieces from hurting online requests:
- `background_batch` (the asyncio dispatcher's default): up to `background_pieces`
  pieces at a time (the dispatcher's default: one per core, so that batch work can
  use the whole machine) run in the *background*, beside whatever online execution
  runs, each on a thread the operating system runs at the lowest priority. They hold
  no executor, so online work never waits for a piece to end; the OS gives the
  pieces only the CPU online work leaves idle. Pieces take up to BACKGROUND_PIECE_S
  (few, cheap hand-offs) and teach L(b) nothing (their times include preemption).
- otherwise a piece holds the executor, so its L(b) is kept under half the online
  budget (a low quantile of recent admitted online requests' deadline - arrival) and
  an online request arriving meanwhile still makes its deadline (see batching.py).
"""

from __future__ import annotations

import bisect

from .queue import Batch, Lane

# Predicted length of one background batch-class piece.
BACKGROUND_PIECE_S = 0.025


class BackgroundPieces:
    """SchedulerCore's background pieces (its state: see SchedulerCore.__init__)."""

    def _piece_room(self) -> bool:
        """Whether a background piece may start now: room for one more, no online work queued."""
        return (self.background_batch and len(self.background) < self.background_pieces
                and self.queued_online_rows == 0)

    def _start_piece(self, lane: Lane, now: float) -> Batch | None:
        items, rows = self._take(lane, self._piece_rows(), 1 << 30)
        if not items:
            return None
        batch = Batch(lane.key, items, rows, self.latency.predict(rows), now)
        batch.latency = self.latency
        batch.online = False
        batch.background = True
        self.background.append(batch)
        self._count_batch(rows)
        return batch

    def _piece_rows(self) -> int:
        """Rows of a background piece: the most that L(b) says fit BACKGROUND_PIECE_S."""
        table = self.latency.table_list
        rows = bisect.bisect_right(table, BACKGROUND_PIECE_S, 1, self.cap + 1) - 1
        return max(1, rows)
