"""What every vpipe part shares: the one error type and the command-line boundary."""
