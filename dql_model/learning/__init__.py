"""The learner: sequences, the Q-network, the agent's losses, the training loop, device choice and the model registry."""
