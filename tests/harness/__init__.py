"""Test support shared by many test modules: fakes on the seams, real-component helpers."""
