"""Widgets, panels and dialogs (no inference logic)."""
