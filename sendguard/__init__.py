"""SendGuard core: message model, policy, durable outbox, audit log and mailbox connectors.

The core imports no UI or web code (checked by import-linter in ``make test``).
"""

__version__ = "0.1.0"
# SendGuard's own packages: a failed import of one of them is a bug, never a missing optional extra
OWN_PACKAGES = ("sendguard", "addin", "desktop")
