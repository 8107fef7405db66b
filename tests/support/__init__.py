"""Helpers for the test-suite that are not tests themselves (real servers and the like)."""
