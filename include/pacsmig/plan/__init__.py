"""Phase 2: inventory into the ledger, strategies, partitions and priorities."""
