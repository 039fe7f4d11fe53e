"""The Darknet core: cfg text, layer specs, network shapes, .weights files, the PyTorch model."""
