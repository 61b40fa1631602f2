"""Models: hub loading, the model zoo, pools, and the mini zoo."""
