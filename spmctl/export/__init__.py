"""Export membranes: as LoRA files, merged into one membrane, or merged into a model's weights."""
