"""Mailbox connectors behind one interface (see base.py): Maildir, SMTP relay, EWS, Graph, Gmail."""
