"""W+ edits: the three official direction formats, their exact semantics, and the slider catalog."""
