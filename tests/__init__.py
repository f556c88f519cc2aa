"""
Tests for sockudo-tw (twisted.trial).
"""
