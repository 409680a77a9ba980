"""Multi-turn episodes: the turn loop, environments, and the tools a policy may call."""
