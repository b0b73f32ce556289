"""Training the W+ adapter (REFERENCE.md §6): objectives, data, the accelerate loop and the loss probe."""
