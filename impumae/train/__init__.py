"""Training loops apart from the model: masked pretraining, survival fine-tuning, checkpoints."""
