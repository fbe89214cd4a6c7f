"""The README, docs/ and examples/ run and do what they claim."""
