"""The procedural counting world of the tiny demo model, and its exact object counter."""
