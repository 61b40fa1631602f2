"""Tasks: VTAB-1k, the offline mini suite, and the input pipeline."""
