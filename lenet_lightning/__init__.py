"""LeNet on MNIST and Fashion-MNIST with PyTorch Lightning, configured by Hydra."""
