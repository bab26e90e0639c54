"""The data: MNIST and Fashion-MNIST files on disk, their in-memory batches, augmentation and users' own pictures."""
