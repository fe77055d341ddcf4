"""The consistency checks, one module per concern; ``infra.consistency`` runs them all."""
