"""Progress: a tqdm bar on an interactive terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("dit_core.train")

__all__ = ["Progress", "format_eta"]


def format_eta(seconds: float) -> str:
    """``3725 -> '1h02m05s'``, ``65 -> '1m05s'``."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Reports steps, loss, images/s and ETA; silent on non-main processes."""

    def __init__(self, total: int, start: int, enabled: bool = True, use_bar: bool | None = None):
        self.total, self.enabled = total, enabled
        self.use_bar = enabled and (sys.stderr.isatty() if use_bar is None else use_bar)
        self._bar = None
        if self.use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
        self._last = start

    def update(self, step: int, loss: float, images_per_s: float, steps_per_s: float) -> None:
        """Called at each log step with the interval's mean loss and throughput."""
        if not self.enabled:
            return
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        if self._bar is not None:
            self._bar.update(step - self._last)
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}", refresh=False)
        else:
            log.info(
                "step %d/%d | loss %.4f | %.1f img/s | eta %s",
                step, self.total, loss, images_per_s, format_eta(eta),
            )  # fmt: skip
        self._last = step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
