"""Camera: frame sources (pull-based, plain Python) and the Qt controller that runs them on threads."""
