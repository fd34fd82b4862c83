"""Retention service: scheduled purges of expired audit events and reconciliation of face vectors
with biometric consent, with a run history."""
