"""The policy engine (issue 16): policy files, tiers, tripwires, trust debt."""
