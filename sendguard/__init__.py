"""SendGuard core: message model, policy, durable outbox, audit log and mailbox connectors.

The core imports no UI or web code (checked by import-linter in ``make test``).
"""

__version__ = "0.1.0"
