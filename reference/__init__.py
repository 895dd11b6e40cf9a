"""The encoder mmBERT trains (ModernBERT-style), its checkpoints, and the checks that train and evaluate it."""
