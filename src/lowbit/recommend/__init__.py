"""lowbit recommend: a method for a scenario (knowledge base, policy, verification) and mixed precision."""
