"""Server plumbing shared by node, hub and keeper: nothing of the contract, nothing of one service."""
