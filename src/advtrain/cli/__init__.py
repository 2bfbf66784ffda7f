"""advtrain.cli."""
