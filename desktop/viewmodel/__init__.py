"""GUI state as QObjects (no widgets): edits with undo/redo, generation settings, identities, studio."""
