"""The neural trainer: data path (Petastorm), PyTorch loop, TorchDistributor glue, checkpoints."""
