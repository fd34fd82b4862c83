"""Consent service: the append-only consent ledger and the revocation outbox."""
