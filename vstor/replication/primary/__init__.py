"""The primary's side of a pair: one Shipper thread per pair.

``shipper`` (the Shipper: connects, ships durable journal records in order within a window,
folds what it cannot ship into the dirty bitmap, suspends after an outage), with its phases as
mixins: ``copier`` (the initial copy and the resync of dirty ranges) and ``handover`` (split,
drain and the planned takeover's demotion); ``parts`` declares what those phases reach on it.
"""

from __future__ import annotations

__all__ = ["copier", "handover", "parts", "shipper"]
