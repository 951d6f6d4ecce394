"""Reading models from their sources, and saving/loading lowbit checkpoints."""
