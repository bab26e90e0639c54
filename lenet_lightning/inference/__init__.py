"""Using a trained checkpoint: evaluate it on the test set, classify pictures, export it."""
