"""H²MT hierarchy: document outlines, trees of leaves, node memories and routing."""
