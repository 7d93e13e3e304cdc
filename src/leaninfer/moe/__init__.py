"""MoE recipes: PHDS (post hoc declared sparsity) schedules and soft masks; Roster of Experts later."""
