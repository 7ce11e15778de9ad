"""The specialists (SPEC §6): ten architectures x the diagnosis sets, each trained with early stopping; their test
predictions feed MoED and Voting, their embeddings the RAD index."""
