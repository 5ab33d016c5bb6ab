"""Training and persistence: plural.fit, checkpoints, atomic saved directories, runs."""
