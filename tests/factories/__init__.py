"""Factories: rows made through the same service code the API uses."""
