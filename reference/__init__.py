"""The encoder reference (ModernBERT-style, as in mmBERT) that trains on the phase shards: to come."""
