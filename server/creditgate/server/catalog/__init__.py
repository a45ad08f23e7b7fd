"""The catalog: features, plans and credit packages, parsed and checked before they run."""
