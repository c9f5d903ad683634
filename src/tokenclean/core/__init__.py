"""The data contract: conversations, tokens and the artifacts stages exchange."""
