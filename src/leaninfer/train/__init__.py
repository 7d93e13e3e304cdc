"""Data builders and trainers (self-distillation sets for drafts; later: draft, PHDS and MoE trainers)."""
