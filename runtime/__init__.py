"""torpor's engine. Import the public API from ``actors``; nothing here is stable."""
