"""Hardware profiles: measured or parsed latency data for pruning targets."""
