"""LeNet as a plain ``nn.Module`` and the LightningModule that trains it."""
