"""cnnzoo."""
