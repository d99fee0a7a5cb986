"""Governance of backup administration: who may run a guarded control operation, and when.

``rules`` (pure: the table of guarded control ops, which are destructive, and the guard's
decision), ``admins`` (enrolled admins, their TOTP secrets, lockout) and ``approvals``
(pending requests for a second admin). The control socket's guard is
vstor/control/ops/governance.py; compliance locks are vstor.store.catalog.compliance.
"""

from __future__ import annotations

__all__ = ["admins", "approvals", "rules"]
