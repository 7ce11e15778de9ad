"""The generalist side (MedDr): backends that answer (image, instruction) pairs, DGB/DES synthesis, the instruction
corpus and LoRA fine-tuning."""
