"""Deployment helpers: credentials for a TLS SuperLink and authenticated SuperNodes."""
