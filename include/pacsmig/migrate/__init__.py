"""Phase 3: the per-study migration pipeline (extract, transform, load)."""
