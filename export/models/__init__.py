"""Model families. Each is an ``nn.Module`` with upstream parameter names and no cached state."""
